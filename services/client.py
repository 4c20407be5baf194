"""Typed gRPC clients of the services (``services/proto/vlmops/v1``), for the CLI, product code, tests and
benchmarks; the HTTP ones are in ``infra.clients``.

    with EmbeddingGrpc("127.0.0.1:50051", api_key=key) as emb:
        vectors = emb.embed_text(["a red circle"]).vectors          # (1, dim) float32, unit norm
        for chunk in emb.embed_text_stream(texts): ...             # bulk: chunks in order

Every call sends the key (``authorization: Bearer``) and the current request id (``x-request-id``),
has a deadline (``timeout_s``), and raises the typed vlmops error of the status the service answered
(:func:`raise_typed`): ``InvalidInput``, ``NotFound``, ``PayloadTooLarge``, ``Conflict``, ``Overloaded``,
``NotReady``, ``DeadlineExceeded``, ``Unauthenticated``, ``Forbidden``; :class:`GrpcError` otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn, TypeVar

import grpc
import numpy as np
from pydantic import SecretStr

from infra.auth import Forbidden, Unauthenticated
from infra.clients import Embeddings
from infra.errors import (
    Conflict,
    DeadlineExceeded,
    InvalidInput,
    NotBuilt,
    NotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    VlmopsError,
)
from infra.logs import current_request_id
from services.proto.vlmops.v1 import (
    captioning_pb2,
    captioning_pb2_grpc,
    common_pb2,
    embedding_pb2,
    embedding_pb2_grpc,
    grounding_pb2,
    grounding_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
    vqa_pb2,
    vqa_pb2_grpc,
)
from services.rpc.edge import ERROR_KEY
from services.rpc.search import from_values, to_value

C = TypeVar("C", bound="GrpcClient")

TYPED: dict[grpc.StatusCode, type[VlmopsError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: Conflict,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: Forbidden,
    grpc.StatusCode.UNAVAILABLE: NotReady,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


class GrpcError(VlmopsError):
    """A status with no typed error of its own (INTERNAL, UNIMPLEMENTED, ...); ``code`` is kept."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"gRPC {code.name}: {message}")
        self.code = code


ERRORS: dict[str, type[VlmopsError]] = {
    kind.__name__: kind
    for kind in (InvalidInput, NotFound, PayloadTooLarge, Conflict, NotBuilt, Overloaded, NotReady, DeadlineExceeded)
} | {"Unauthenticated": Unauthenticated, "Forbidden": Forbidden}


def raise_typed(exc: grpc.RpcError) -> NoReturn:
    """The typed error the service named (trailing metadata ``vlmops-error``), else the status code's."""
    code, message = exc.code(), exc.details() or ""  # type: ignore[attr-defined]
    named = dict(exc.trailing_metadata() or ()).get(ERROR_KEY, "")  # type: ignore[attr-defined]
    if named in ERRORS:
        raise ERRORS[named](message) from exc
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:  # grpc's own (a message over the size limit)
        raise PayloadTooLarge(message) from exc
    if code in TYPED:
        raise TYPED[code](message) from exc
    raise GrpcError(code, message) from exc


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]


class GrpcClient:
    """A channel to one service: its key and the current request id on every call, a deadline per call."""

    def __init__(
        self,
        target: str,
        api_key: SecretStr | str | None = None,
        timeout_s: float = 120.0,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self.key_metadata = (("authorization", f"Bearer {key}"),) if key else ()
        self.timeout_s = timeout_s
        self.channel = grpc.insecure_channel(target, options=channel_options(max_message_bytes))

    def metadata(self) -> tuple[tuple[str, str], ...]:
        rid = current_request_id()
        return (*self.key_metadata, ("x-request-id", rid)) if rid else self.key_metadata

    def call(self, method: Any, request: Any, timeout_s: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout_s or self.timeout_s, metadata=self.metadata())
        except grpc.RpcError as exc:
            raise_typed(exc)

    def stream(self, method: Any, request: Any, timeout_s: float | None = None) -> Iterator[Any]:
        try:
            yield from method(request, timeout=timeout_s or self.timeout_s, metadata=self.metadata())
        except grpc.RpcError as exc:
            raise_typed(exc)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self: C) -> C:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _version(model_version: str | None) -> dict[str, str]:
    return {"model_version": model_version} if model_version is not None else {}


def embeddings(rows: Sequence[Any]) -> Embeddings:
    dim = rows[0].dim if rows else 0
    vectors = np.empty((len(rows), dim), dtype=np.float32)
    for i, row in enumerate(rows):
        vectors[i] = row.vector
    return Embeddings(
        vectors=vectors,
        versions=[r.model.version for r in rows],
        model=rows[0].model.model if rows else "",
        truncated=[bool(getattr(r, "truncated", False)) for r in rows],
    )


class EmbeddingGrpc(GrpcClient):
    def __init__(self, target: str, api_key: SecretStr | str | None = None, timeout_s: float = 120.0) -> None:
        super().__init__(target, api_key, timeout_s)
        self.stub = embedding_pb2_grpc.EmbeddingStub(self.channel)

    @staticmethod
    def _texts(texts: Sequence[str], model_version: str | None) -> embedding_pb2.EmbedTextRequest:
        return embedding_pb2.EmbedTextRequest(
            items=[embedding_pb2.TextItem(text=t, **_version(model_version)) for t in texts]
        )

    @staticmethod
    def _images(images: Sequence[bytes], model_version: str | None) -> embedding_pb2.EmbedImageRequest:
        return embedding_pb2.EmbedImageRequest(
            items=[embedding_pb2.ImageItem(image=b, **_version(model_version)) for b in images]
        )

    def embed_text(self, texts: Sequence[str], model_version: str | None = None) -> Embeddings:
        return embeddings(self.call(self.stub.EmbedText, self._texts(texts, model_version)).embeddings)

    def embed_image(self, images: Sequence[bytes], model_version: str | None = None) -> Embeddings:
        return embeddings(self.call(self.stub.EmbedImage, self._images(images, model_version)).embeddings)

    def embed_text_stream(self, texts: Sequence[str], model_version: str | None = None) -> Iterator[Embeddings]:
        """Chunks of embeddings in the texts' order, as their batches finish."""
        for chunk in self.stream(self.stub.EmbedTextStream, self._texts(texts, model_version)):
            yield embeddings(chunk.embeddings)

    def embed_image_stream(self, images: Sequence[bytes], model_version: str | None = None) -> Iterator[Embeddings]:
        for chunk in self.stream(self.stub.EmbedImageStream, self._images(images, model_version)):
            yield embeddings(chunk.embeddings)

    def classify(
        self,
        images: Sequence[bytes],
        labels: Sequence[str],
        templates: Sequence[str] | None = None,
        model_version: str | None = None,
    ) -> list[dict[str, Any]]:
        items = [
            embedding_pb2.ClassifyItem(image=b, labels=labels, templates=templates or [], **_version(model_version))
            for b in images
        ]
        out = self.call(self.stub.Classify, embedding_pb2.ClassifyRequest(items=items))
        return [
            {
                "labels": list(c.labels),
                "probs": list(c.probs),
                "top_label": c.top_label,
                "model": c.model.model,
                "version": c.model.version,
            }
            for c in out.classifications
        ]


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]
    blob_uri: str
    model: str
    version: str


def payload_of(payload: dict[str, Any] | None) -> dict[str, common_pb2.Value]:
    return {k: to_value(v) for k, v in (payload or {}).items()}


def ingest_item(source: bytes | str, payload: dict[str, Any] | None = None) -> search_pb2.IngestItem:
    """An image file's bytes, or a URI the service may read."""
    if isinstance(source, bytes):
        return search_pb2.IngestItem(image=source, payload=payload_of(payload))
    return search_pb2.IngestItem(uri=source, payload=payload_of(payload))


class SearchGrpc(GrpcClient):
    def __init__(self, target: str, api_key: SecretStr | str | None = None, timeout_s: float = 300.0) -> None:
        super().__init__(target, api_key, timeout_s)
        self.stub = search_pb2_grpc.SearchStub(self.channel)

    def create_collection(
        self, name: str, model: str | None = None, keyword_fields: Sequence[str] = ()
    ) -> search_pb2.Collection:
        request = search_pb2.CreateCollectionRequest(name=name, keyword_fields=keyword_fields)
        if model is not None:
            request.model = model
        return self.call(self.stub.CreateCollection, request)

    def collections(self) -> list[search_pb2.Collection]:
        return list(self.call(self.stub.ListCollections, search_pb2.ListCollectionsRequest()).collections)

    def delete_collection(self, name: str) -> str:
        return str(self.call(self.stub.DeleteCollection, search_pb2.DeleteCollectionRequest(name=name)).deleted)

    def ingest(
        self, collection: str, sources: Sequence[bytes | str], payloads: Sequence[dict[str, Any]] | None = None
    ) -> search_pb2.IngestResponse:
        payloads = payloads or [{}] * len(sources)
        items = [ingest_item(s, p) for s, p in zip(sources, payloads, strict=True)]
        return self.call(self.stub.Ingest, search_pb2.IngestRequest(collection=collection, items=items))

    def ingest_stream(
        self, collection: str, items: Iterable[tuple[bytes | str, dict[str, Any]]], chunk: int = 32
    ) -> search_pb2.IngestResponse:
        """Any number of (source, payload), sent in requests of ``chunk`` items as ``items`` yields them (a
        generator reading files keeps memory bounded); one answer at the end."""

        def requests() -> Iterator[search_pb2.IngestRequest]:
            batch: list[search_pb2.IngestItem] = []
            for source, payload in items:
                batch.append(ingest_item(source, payload))
                if len(batch) >= chunk:
                    yield search_pb2.IngestRequest(collection=collection, items=batch)
                    batch = []
            if batch:
                yield search_pb2.IngestRequest(collection=collection, items=batch)

        return self.call(self.stub.IngestStream, requests())

    def search(
        self,
        collection: str,
        *,
        text: str | None = None,
        image: bytes | None = None,
        item_id: str | None = None,
        top_k: int = 10,
        filter: dict[str, Any] | None = None,
        score_threshold: float | None = None,
        model_version: str | None = None,
    ) -> list[Hit]:
        """``model_version``: the collection as embedded by that version (a running or shadow build's)."""
        request = search_pb2.SearchRequest(collection=collection, top_k=top_k, filter=payload_of(filter))
        for name, value in (("text", text), ("image", image), ("item_id", item_id)):
            if value is not None:
                setattr(request, name, value)
        if score_threshold is not None:
            request.score_threshold = score_threshold
        if model_version is not None:
            request.model_version = model_version
        out = self.call(self.stub.Search, request)
        return [
            Hit(r.id, r.score, from_values(r.payload, "payload"), r.blob_uri, r.model.model, r.model.version)
            for r in out.results
        ]


class CaptioningGrpc(GrpcClient):
    def __init__(self, target: str, api_key: SecretStr | str | None = None, timeout_s: float = 300.0) -> None:
        super().__init__(target, api_key, timeout_s)
        self.stub = captioning_pb2_grpc.CaptioningStub(self.channel)

    def caption(self, images: Sequence[bytes], model_version: str | None = None, **params: int) -> list[Any]:
        """``params``: ``max_new_tokens``, ``num_beams``."""
        items = [captioning_pb2.CaptionItem(image=b, **_version(model_version), **params) for b in images]
        return list(self.call(self.stub.Caption, captioning_pb2.CaptionRequest(items=items)).captions)


class VQAGrpc(GrpcClient):
    def __init__(self, target: str, api_key: SecretStr | str | None = None, timeout_s: float = 300.0) -> None:
        super().__init__(target, api_key, timeout_s)
        self.stub = vqa_pb2_grpc.VQAStub(self.channel)

    def answer(self, pairs: Sequence[tuple[bytes, str]], model_version: str | None = None) -> list[Any]:
        items = [vqa_pb2.QuestionItem(image=b, question=q, **_version(model_version)) for b, q in pairs]
        return list(self.call(self.stub.Answer, vqa_pb2.AnswerRequest(items=items)).answers)


class GroundingGrpc(GrpcClient):
    def __init__(self, target: str, api_key: SecretStr | str | None = None, timeout_s: float = 300.0) -> None:
        super().__init__(target, api_key, timeout_s)
        self.stub = grounding_pb2_grpc.GroundingStub(self.channel)

    def ground(
        self, image: bytes, queries: Sequence[str], model_version: str | None = None, **params: float
    ) -> grounding_pb2.GroundingResult:
        """``params``: ``threshold``, ``nms_iou``."""
        item = grounding_pb2.GroundingItem(image=image, queries=queries, **_version(model_version), **params)
        return self.call(self.stub.Ground, grounding_pb2.GroundRequest(items=[item])).groundings[0]
