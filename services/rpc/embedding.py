"""The embedding service over gRPC (``vlmops.v1.Embedding``): the HTTP API's items, batches and answers.

Embeddings are answered as wire bytes made on the model thread (``services.rpc.wire``); the streams
cut their items into chunks of the batch size and keep :data:`DEPTH` of them with the batcher, so the
model runs one while the next are validated and the last is sent.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc

from infra.auth import Scope
from infra.settings import EmbeddingSettings
from services.proto.vlmops.v1 import common_pb2, embedding_pb2, embedding_pb2_grpc
from services.rpc import wire
from services.rpc.edge import GrpcEdge, deadline_of, rpc
from services.rpc.items import Items, check_count, version_of

DEPTH = 3  # chunks of a stream with the batcher at once

Rows = Callable[[Sequence[Any]], list[dict[str, Any]]]


def text_rows(items: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"text": it.text, "model_version": version_of(it)} for it in items]


def image_rows(items: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"image": it.image, "model_version": version_of(it)} for it in items]


def classify_rows(items: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {
            "image": it.image,
            "labels": list(it.labels),
            "templates": list(it.templates) or None,
            "model_version": version_of(it),
        }
        for it in items
    ]


class EmbeddingRpc(embedding_pb2_grpc.EmbeddingServicer):
    descriptor = embedding_pb2.DESCRIPTOR.services_by_name["Embedding"]

    def __init__(self, service: Any, edge: GrpcEdge, schemas: Any, limits: EmbeddingSettings) -> None:
        self.service = service
        self.edge = edge
        self.limits = limits
        self.texts = Items(schemas.TextItem)
        self.images = Items(schemas.ImageItem)
        self.classifications = Items(schemas.ClassifyItem)

    async def _embed(
        self, request: Any, items: Items, rows: Rows, run: Any, context: grpc.aio.ServicerContext
    ) -> bytes:
        check_count(len(request.items), self.limits.max_items, "the streaming call")
        answers = await self.service.batched(items.validate(rows(request.items)), run, deadline_of(context))
        return wire.embeddings_response(answers)

    async def _stream(
        self, request: Any, items: Items, rows: Rows, run: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        n = len(request.items)
        check_count(n, self.limits.grpc_max_stream_items)
        size, deadline = self.limits.max_batch_size, deadline_of(context)
        pending: deque[tuple[int, asyncio.Future[list[bytes]]]] = deque()
        try:
            for start in range(0, n, size):
                chunk = items.validate(rows(request.items[start : start + size]), start)
                pending.append((start, asyncio.ensure_future(self.service.batched(chunk, run, deadline))))
                if len(pending) >= DEPTH:
                    offset, done = pending.popleft()
                    yield wire.embeddings_response(await done, offset)
            while pending:
                offset, done = pending.popleft()
                yield wire.embeddings_response(await done, offset)
        finally:
            for _, left in pending:  # an error or a cancelled call: the rest never reaches the model
                left.cancel()

    @rpc(Scope.read)
    async def EmbedText(self, request: Any, context: grpc.aio.ServicerContext) -> bytes:  # noqa: N802
        return await self._embed(request, self.texts, text_rows, self.service._embed_text, context)

    @rpc(Scope.read)
    async def EmbedImage(self, request: Any, context: grpc.aio.ServicerContext) -> bytes:  # noqa: N802
        return await self._embed(request, self.images, image_rows, self.service._embed_image, context)

    @rpc(Scope.read)
    async def EmbedTextStream(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:  # noqa: N802
        async for answer in self._stream(request, self.texts, text_rows, self.service._embed_text, context):
            yield answer

    @rpc(Scope.read)
    async def EmbedImageStream(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:  # noqa: N802
        async for answer in self._stream(request, self.images, image_rows, self.service._embed_image, context):
            yield answer

    @rpc(Scope.read)
    async def Classify(self, request: Any, context: grpc.aio.ServicerContext) -> embedding_pb2.ClassifyResponse:  # noqa: N802
        check_count(len(request.items), self.limits.max_items)
        items = self.classifications.validate(classify_rows(request.items))
        results = await self.service.batched(items, self.service._classify, deadline_of(context))
        return embedding_pb2.ClassifyResponse(
            classifications=[
                embedding_pb2.Classification(
                    labels=r.labels,
                    probs=r.probs,
                    top_label=r.top_label,
                    model=common_pb2.ModelRef(model=r.model, version=r.version),
                )
                for r in results
            ]
        )


def servicers(schemas: Any, limits: EmbeddingSettings) -> Callable[[Any, GrpcEdge], list[EmbeddingRpc]]:
    """``gateway(grpc=...)`` of the embedding service."""
    return lambda service, edge: [EmbeddingRpc(service, edge, schemas, limits)]
