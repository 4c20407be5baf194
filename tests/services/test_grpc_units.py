"""The parts of gRPC serving that need no server: the hand-made wire bytes, the error mapping, the
options from settings, and the generated code against the protos."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from bentoml.exceptions import BentoMLException
from pydantic import BaseModel, ValidationError, field_validator

from infra.auth import Forbidden, Unauthenticated
from infra.errors import (
    Conflict,
    DeadlineExceeded,
    InvalidInput,
    ModelFormatError,
    NotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
)
from infra.settings import Settings
from services.edge import to_http
from services.proto import generate
from services.proto.vlmops.v1 import embedding_pb2 as pb
from services.rpc import wire
from services.rpc.edge import INTERNAL, status_of
from services.rpc.server import bind_addresses, server_options


def test_the_generated_code_is_what_the_protos_give() -> None:
    assert generate.stale() == [], "run `make proto`"


@pytest.mark.parametrize("dim", [1, 96, 512, 4096])
@pytest.mark.parametrize("truncated", [False, True])
def test_wire_embeddings_read_back_as_the_proto_messages(dim: int, truncated: bool) -> None:
    rng = np.random.default_rng(dim)
    vectors = rng.standard_normal((3, dim)).astype(np.float32)
    ref = wire.model_ref("vlmops-clip", "12")
    items = [wire.embedding(v, ref, truncated) for v in vectors]
    for offset in (0, 64, 300_000):
        parsed = pb.EmbedTextResponse.FromString(wire.embeddings_response(items, offset))
        assert parsed.offset == offset and len(parsed.embeddings) == 3
        for got, want in zip(parsed.embeddings, vectors, strict=True):
            assert np.array_equal(np.asarray(got.vector, dtype=np.float32), want)
            assert got.dim == dim and got.truncated is truncated
            assert (got.model.model, got.model.version) == ("vlmops-clip", "12")
    image = pb.ImageEmbedding.FromString(wire.embedding(vectors[0], ref))
    assert image.dim == dim and len(image.vector) == dim
    # and byte for byte what protobuf itself writes
    message = pb.TextEmbedding(vector=vectors[0].tolist(), dim=dim, truncated=truncated)
    message.model.model, message.model.version = "vlmops-clip", "12"
    assert message.SerializeToString() == items[0]


def test_varints_match_protobuf() -> None:
    for n in (0, 1, 127, 128, 300, 2**21, 2**32 + 5):
        assert pb.EmbedTextResponse.FromString(wire.tag(2, wire.VARINT) + wire.varint(n)).offset == n % 2**32


class Item(BaseModel):
    text: str

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text is empty")
        return v


def validation_error() -> ValidationError:
    try:
        Item(text=" ")
    except ValidationError as exc:
        return exc
    raise AssertionError("no error")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInput("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (PayloadTooLarge("big"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (Overloaded("busy"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (Conflict("exists"), grpc.StatusCode.ALREADY_EXISTS),
        (NotFound("nope"), grpc.StatusCode.NOT_FOUND),
        (NotReady("loading"), grpc.StatusCode.UNAVAILABLE),
        (DeadlineExceeded("late"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (Unauthenticated("who"), grpc.StatusCode.UNAUTHENTICATED),
        (Forbidden("scope"), grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_typed_errors_map_to_codes_with_their_messages(error: Exception, code: grpc.StatusCode) -> None:
    assert status_of(error) == (code, str(error))
    wrapped = to_http(error)  # as the HTTP edge raises it, with the typed error as its cause
    wrapped.__cause__ = error
    assert status_of(wrapped) == (code, str(error))


def test_validation_errors_name_the_field_and_the_rest_are_internal() -> None:
    code, message = status_of(validation_error())
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "text: Value error, text is empty" in message
    assert status_of(RuntimeError("secret detail")) == (grpc.StatusCode.INTERNAL, INTERNAL)
    assert status_of(ModelFormatError("files missing")) == (grpc.StatusCode.INTERNAL, INTERNAL)
    assert status_of(BentoMLException("x"))[0] is grpc.StatusCode.INTERNAL


def test_options_come_from_settings() -> None:
    limits = Settings(embedding={"grpc_max_message_bytes": 5_000_000, "grpc_keepalive_s": 30}).embedding
    options = dict(server_options(limits))
    assert options["grpc.max_receive_message_length"] == options["grpc.max_send_message_length"] == 5_000_000
    assert options["grpc.keepalive_time_ms"] == 30_000 and options["grpc.so_reuseport"] == 1
    assert "grpc.max_connection_age_ms" in options
    no_age = Settings(search={"grpc_max_connection_age_s": None}).search
    assert "grpc.max_connection_age_ms" not in dict(server_options(no_age))
    ports = {
        name: getattr(Settings(), name).grpc_port for name in ("embedding", "captioning", "vqa", "grounding", "search")
    }
    assert len(set(ports.values())) == 5  # one machine can run them all


def test_the_grpc_port_binds_where_http_listens() -> None:
    assert bind_addresses(["0.0.0.0"], 50051) == ["0.0.0.0:50051"]
    assert bind_addresses(["::", "127.0.0.1"], 7) == ["127.0.0.1:7", "[::]:7"]
    assert bind_addresses([], 9) == ["127.0.0.1:9"]
