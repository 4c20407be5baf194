"""The embedding service over gRPC, as a real ``bentoml serve`` process called by real gRPC clients: every
RPC, its answers against HTTP's, each error code from a real cause, health, reflection, metrics."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from infra.clients import EmbeddingClient
from infra.errors import InvalidInput, NotFound, PayloadTooLarge
from infra.images import encode_png
from infra.process import ServiceProcess
from infra.toyworld import Domain, Split, ToyWorld, class_labels
from registry.families.clip import ClipModel
from registry.store import RegistryStore
from services.client import EmbeddingGrpc
from services.proto.vlmops.v1 import embedding_pb2 as pb
from services.proto.vlmops.v1 import embedding_pb2_grpc
from tests.conftest import make_settings
from tests.metrics import samples

pytestmark = pytest.mark.slow
MODEL = "vlmops-clip"
MAX_MESSAGE = 2_000_000
MAX_STREAM = 3000


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("grpc-home")


@pytest.fixture(scope="module")
def registry(home: Path, toy_clip: tuple[ClipModel, dict[str, float]]) -> RegistryStore:
    store = RegistryStore.from_settings(make_settings(home))
    store.promote(MODEL, store.register(MODEL, toy_clip[0]).version)
    store.register(MODEL, ClipModel.from_pretrained("vlmops-toy-clip", seed=7))  # version 2, to pin
    return store


@pytest.fixture(scope="module")
def service(home: Path, registry: RegistryStore) -> Iterator[ServiceProcess]:
    env = {
        "VLMOPS_HOME": str(home),
        "VLMOPS_EMBEDDING__MAX_TEXT_CHARS": "500",
        "VLMOPS_EMBEDDING__MAX_IMAGE_PIXELS": "1000000",
        "VLMOPS_EMBEDDING__GRPC_MAX_MESSAGE_BYTES": str(MAX_MESSAGE),
        "VLMOPS_EMBEDDING__GRPC_MAX_STREAM_ITEMS": str(MAX_STREAM),
        "VLMOPS_EMBEDDING__MAX_LATENCY_MS": "10000",
    }
    with ServiceProcess("embedding", env=env, log_path=home / "service.log") as svc:
        yield svc


@pytest.fixture(scope="module")
def stub(service: ServiceProcess) -> Iterator[embedding_pb2_grpc.EmbeddingStub]:
    options = [("grpc.max_send_message_length", 8 * MAX_MESSAGE)]  # so the server's limit is what refuses
    with grpc.insecure_channel(service.grpc_target, options=options) as channel:
        yield embedding_pb2_grpc.EmbeddingStub(channel)


@pytest.fixture(scope="module")
def emb(service: ServiceProcess) -> Iterator[EmbeddingGrpc]:
    with EmbeddingGrpc(service.grpc_target) as client:
        yield client


@pytest.fixture(scope="module")
def http(service: ServiceProcess) -> Iterator[EmbeddingClient]:
    client = EmbeddingClient(service.url)
    yield client
    client.close()


def png(image: Image.Image) -> bytes:
    return encode_png(image)


def texts_request(texts: list[str], **item: str) -> pb.EmbedTextRequest:
    return pb.EmbedTextRequest(items=[pb.TextItem(text=t, **item) for t in texts])


class TestEmbeddingRpcs:
    def test_vectors_are_unit_and_equal_the_http_ones(self, emb: EmbeddingGrpc, http: EmbeddingClient) -> None:
        texts = ["a red circle", "a blue star", "a green square"]
        images = [png(s.image) for s in ToyWorld().samples(4, Split.TEST)]
        for over_grpc, over_http in (
            (emb.embed_text(texts), http.embed_text(texts)),
            (emb.embed_image(images), http.embed_image(images)),
        ):
            assert over_grpc.vectors.shape == over_http.vectors.shape and over_grpc.vectors.shape[1] == 96
            assert np.allclose(np.linalg.norm(over_grpc.vectors, axis=1), 1.0, atol=1e-4)
            assert np.abs(over_grpc.vectors - over_http.vectors).max() < 1e-5
            assert over_grpc.model == MODEL and set(over_grpc.versions) == {"1"}

    def test_the_matching_caption_ranks_first(self, emb: EmbeddingGrpc) -> None:
        samples = [ToyWorld().sample(i, Split.TEST, n_objects=1) for i in range(200)]
        one_per_class = list({s.label: s for s in samples}.values())
        img = emb.embed_image([png(s.image) for s in one_per_class]).vectors
        txt = emb.embed_text([s.caption for s in one_per_class]).vectors
        assert ((img @ txt.T).argmax(axis=1) == np.arange(len(one_per_class))).mean() >= 0.9

    def test_classify_is_accurate_on_held_out_images(self, emb: EmbeddingGrpc) -> None:
        held_out = list(ToyWorld().samples(120, Split.TEST, Domain.PLAIN, n_objects=1, start=2000))
        results = emb.classify([png(s.image) for s in held_out[:60]], class_labels())
        results += emb.classify([png(s.image) for s in held_out[60:]], class_labels())
        assert np.mean([r["top_label"] == s.label for r, s in zip(results, held_out, strict=True)]) >= 0.9
        probs = results[0]["probs"]
        assert len(probs) == 24 and abs(sum(probs) - 1) < 1e-4 and probs == sorted(probs, reverse=True)
        assert results[0]["model"] == MODEL and results[0]["version"] == "1"

    def test_an_item_pins_its_version(self, emb: EmbeddingGrpc) -> None:
        production = emb.embed_text(["a red circle"])
        pinned = emb.embed_text(["a red circle"], model_version="2")
        assert pinned.versions == ["2"] and production.versions == ["1"]
        assert float(production.vectors[0] @ pinned.vectors[0]) < 0.99  # another model made it

    def test_a_text_over_the_context_is_cut_and_said_so(self, emb: EmbeddingGrpc) -> None:
        out = emb.embed_text(["a red circle", " ".join(["star"] * 90)])
        assert out.truncated == [False, True]

    def test_streams_answer_every_item_in_order(
        self, emb: EmbeddingGrpc, stub: embedding_pb2_grpc.EmbeddingStub
    ) -> None:
        texts = [f"a red circle number {i}" for i in range(1000)]
        chunks = list(stub.EmbedTextStream(texts_request(texts), timeout=120))
        offsets = [c.offset for c in chunks]
        sizes = [len(c.embeddings) for c in chunks]
        assert offsets == list(range(0, 1000, 64)) and sum(sizes) == 1000
        streamed = np.concatenate([v.vectors for v in emb.embed_text_stream(texts)])
        for i in (0, 63, 64, 500, 999):
            alone = emb.embed_text([texts[i]]).vectors[0]
            assert np.abs(streamed[i] - alone).max() < 1e-5
        images = [png(s.image) for s in ToyWorld().samples(150, Split.TEST)]
        by_stream = np.concatenate([v.vectors for v in emb.embed_image_stream(images)])
        assert by_stream.shape == (150, 96)
        assert np.abs(by_stream[149] - emb.embed_image([images[149]]).vectors[0]).max() < 1e-5


def bomb() -> bytes:
    """A PNG of 2000 x 2000 pixels (over the service's 1M) in a few kilobytes."""
    out = io.BytesIO()
    Image.new("RGB", (2000, 2000)).save(out, format="PNG")
    return out.getvalue()


class TestErrors:
    def test_each_bad_input_gets_its_code_and_the_service_keeps_serving(
        self, stub: embedding_pb2_grpc.EmbeddingStub, emb: EmbeddingGrpc, service: ServiceProcess
    ) -> None:
        good = png(ToyWorld().sample(0, Split.TEST).image)
        image = lambda data: pb.EmbedImageRequest(items=[pb.ImageItem(image=data)])  # noqa: E731
        cases = [
            (stub.EmbedText, pb.EmbedTextRequest(), grpc.StatusCode.INVALID_ARGUMENT, "at least one item"),
            (stub.EmbedText, texts_request(["  "]), grpc.StatusCode.INVALID_ARGUMENT, "items.0.text"),
            (stub.EmbedText, texts_request(["a", "x" * 501]), grpc.StatusCode.INVALID_ARGUMENT, "items.1.text"),
            (stub.EmbedText, texts_request(["a"], model_version="99"), grpc.StatusCode.NOT_FOUND, "99"),
            (stub.EmbedText, texts_request(["a"] * 100_000), grpc.StatusCode.RESOURCE_EXHAUSTED, "over the limit"),
            (stub.EmbedImage, image(b""), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
            (stub.EmbedImage, image(b"\x89PNG\r\n\x1a\nnot really"), grpc.StatusCode.INVALID_ARGUMENT, "corrupt"),
            (stub.EmbedImage, image(b"plain text"), grpc.StatusCode.INVALID_ARGUMENT, "decoded"),
            (stub.EmbedImage, image(bomb()), grpc.StatusCode.RESOURCE_EXHAUSTED, "pixels"),
            (stub.EmbedImage, image(b"\0" * (MAX_MESSAGE + 10)), grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
            (
                stub.Classify,
                pb.ClassifyRequest(items=[pb.ClassifyItem(image=good, labels=["only one"])]),
                grpc.StatusCode.INVALID_ARGUMENT,
                "at least 2",
            ),
            (
                stub.Classify,
                pb.ClassifyRequest(items=[pb.ClassifyItem(image=good, labels=["a", "b"], templates=["no slot"])]),
                grpc.StatusCode.INVALID_ARGUMENT,
                "{}",
            ),
        ]
        for method, request, code, fragment in cases:
            with pytest.raises(grpc.RpcError) as caught:
                method(request, timeout=60)
            assert caught.value.code() is code, (request, caught.value.details())
            assert fragment in caught.value.details(), caught.value.details()
            assert emb.embed_text(["still serving"]).vectors.shape == (1, 96)
        with pytest.raises(grpc.RpcError) as caught:  # over the stream's limit: refused before any work
            list(stub.EmbedTextStream(texts_request(["a"] * (MAX_STREAM + 1)), timeout=60))
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        log = (Path(service.log_path or "")).read_text()
        assert "Traceback" not in log

    def test_the_typed_client_raises_vlmops_errors(self, emb: EmbeddingGrpc) -> None:
        with pytest.raises(InvalidInput, match="empty"):
            emb.embed_text([" "])
        with pytest.raises(NotFound, match="99"):
            emb.embed_text(["a"], model_version="99")
        with pytest.raises(PayloadTooLarge, match="pixels"):
            emb.embed_image([bomb()])

    def test_a_bad_item_ends_a_stream_after_the_chunks_before_it(self, stub: embedding_pb2_grpc.EmbeddingStub) -> None:
        texts = [f"text {i}" for i in range(300)]
        texts[130] = "   "
        received = []
        with pytest.raises(grpc.RpcError) as caught:
            for chunk in stub.EmbedTextStream(texts_request(texts), timeout=60):
                received.append(chunk.offset)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "items.130.text" in caught.value.details()
        assert set(received) <= {0, 64}  # nothing from the chunk of the bad item, or after it


class TestPlatform:
    def test_health_reflection_and_request_ids(self, service: ServiceProcess) -> None:
        with grpc.insecure_channel(service.grpc_target) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            for name in ("", "vlmops.v1.Embedding"):
                assert (
                    check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING
                )
            with pytest.raises(grpc.RpcError) as caught:
                check(health_pb2.HealthCheckRequest(service="vlmops.v1.Nope"))
            assert caught.value.code() is grpc.StatusCode.NOT_FOUND

            ask = reflection_pb2.ServerReflectionRequest(list_services="")
            answer = next(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([ask])))
            names = {s.name for s in answer.list_services_response.service}
            assert {"vlmops.v1.Embedding", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
            ask = reflection_pb2.ServerReflectionRequest(file_containing_symbol="vlmops.v1.Embedding")
            files = next(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([ask])))
            assert files.file_descriptor_response.file_descriptor_proto  # a client can build its stubs from these

            stub = embedding_pb2_grpc.EmbeddingStub(channel)
            rid = "0123456789abcdef0123456789abcdef"
            _, call = stub.EmbedText.with_call(texts_request(["a"]), metadata=[("x-request-id", rid)], timeout=30)
            assert dict(call.trailing_metadata())["x-request-id"] == rid
        assert f"[{rid}]: EmbedText OK" in (service.log_path or Path()).read_text()

    def test_grpc_calls_are_on_metrics_beside_http(self, service: ServiceProcess, emb: EmbeddingGrpc) -> None:
        ok = samples(service.url, "vlmops_grpc_requests_total", method="EmbedText", code="OK")
        emb.embed_text(["counted"])
        with pytest.raises(InvalidInput):
            emb.embed_text([""])
        assert samples(service.url, "vlmops_grpc_requests_total", method="EmbedText", code="OK") == ok + 1
        assert samples(service.url, "vlmops_grpc_requests_total", method="EmbedText", code="INVALID_ARGUMENT") >= 1
        httpx.post(f"{service.url}/embed_text", json={"items": [{"text": "over HTTP"}]}, timeout=30).raise_for_status()
        metrics = httpx.get(f"{service.url}/metrics").text
        assert 'vlmops_grpc_request_seconds_count{method="EmbedText"}' in metrics
        assert "vlmops_http_requests_total" in metrics  # HTTP's own, beside


def test_every_api_worker_serves_the_one_grpc_port(home: Path, registry: RegistryStore, tmp_path: Path) -> None:
    env = {"VLMOPS_HOME": str(home), "VLMOPS_EMBEDDING__WORKERS": "2"}
    with ServiceProcess("embedding", env=env, log_path=tmp_path / "two-workers.log") as svc:
        deadline = time.monotonic() + 120  # the second worker may come up after the first is ready
        log = ""
        while log.count(f"gRPC on 127.0.0.1:{svc.grpc_port}") < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            log = (tmp_path / "two-workers.log").read_text()
        assert log.count(f"gRPC on 127.0.0.1:{svc.grpc_port}") == 2, log[-3000:]  # SO_REUSEPORT: both bound
        assert "cannot start" not in log
        # new connections, spread by the kernel over the workers; a worker still loading its model says
        # UNAVAILABLE (and its health NOT_SERVING) until it has it
        served = 0
        while served < 6:
            assert time.monotonic() < deadline, "a worker never served"
            with grpc.insecure_channel(svc.grpc_target) as channel:
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
                if status.status != health_pb2.HealthCheckResponse.SERVING:
                    time.sleep(0.5)
                    continue
                out = embedding_pb2_grpc.EmbeddingStub(channel).EmbedText(texts_request(["a red circle"] * 20))
                assert len(out.embeddings) == 20 and out.embeddings[0].model.version == "1"
                served += 1
