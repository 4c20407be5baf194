"""The search service over gRPC (``vlmops.v1.Search``): the same collections, ingest and search as its
HTTP API, run on a thread pool of ``VLMOPS_SEARCH__THREADS`` (each call waits mostly on the embedding
service and the index).

``IngestStream`` stores each ``max_items`` it has received (checked together, as one ``Ingest``) before
it reads more, so a bulk ingest of any size holds one chunk in memory. An error ends the stream with its
status; the chunks before it are stored, and since ingest is idempotent by content a client sends the
whole stream again."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from infra.auth import Scope
from infra.errors import InvalidInput, PayloadTooLarge
from infra.settings import SearchSettings
from services.proto.vlmops.v1 import common_pb2, search_pb2, search_pb2_grpc
from services.rpc.edge import GrpcEdge, rpc
from services.rpc.items import check_count

T = TypeVar("T")


def from_value(value: common_pb2.Value, where: str) -> str | int | float | bool:
    kind = value.WhichOneof("kind")
    if kind is None:
        raise InvalidInput(f"{where} has no value")
    return getattr(value, kind)  # type: ignore[no-any-return]


def from_values(values: Mapping[str, common_pb2.Value], where: str) -> dict[str, Any]:
    return {key: from_value(v, f"{where}[{key!r}]") for key, v in values.items()}


def to_value(value: Any) -> common_pb2.Value:
    if isinstance(value, bool):  # before int: a bool is an int
        return common_pb2.Value(bool_value=value)
    if isinstance(value, int):
        return common_pb2.Value(int_value=value)
    if isinstance(value, float):
        return common_pb2.Value(double_value=value)
    return common_pb2.Value(string_value=str(value))


def collection_message(row: Mapping[str, Any]) -> search_pb2.Collection:
    out = search_pb2.Collection(
        name=row["name"],
        model=row["model"],
        version=row["version"],
        physical=row["physical"],
        dim=row["dim"],
        keyword_fields=row.get("keyword_fields") or [],
        count=row.get("count", 0),
    )
    if build := row.get("build"):
        out.build.CopyFrom(search_pb2.Build(version=build["version"], physical=build["physical"]))
    if job := row.get("reindex"):
        out.reindex.CopyFrom(
            search_pb2.ReindexJob(
                version=job["version"],
                state=job["state"],
                task_id=job.get("task_id") or "",
                failures=job.get("failures") or 0,
                error=job.get("error") or "",
                next_attempt_at=job.get("next_attempt_at") or 0.0,
            )
        )
    return out


def sources_of(items: Any) -> tuple[list[bytes | str], list[dict[str, Any]]]:
    sources: list[bytes | str] = []
    payloads = []
    for n, it in enumerate(items):
        kind = it.WhichOneof("source")
        if kind is None:
            raise InvalidInput(f"item {n}: give exactly one of image and uri")
        sources.append(getattr(it, kind))
        payloads.append(from_values(it.payload, f"item {n} payload"))
    return sources, payloads


class SearchRpc(search_pb2_grpc.SearchServicer):
    descriptor = search_pb2.DESCRIPTOR.services_by_name["Search"]

    def __init__(self, service: Any, edge: GrpcEdge, limits: SearchSettings) -> None:
        self.service = service
        self.edge = edge
        self.limits = limits
        self.pool = ThreadPoolExecutor(limits.threads, thread_name_prefix="grpc-search")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the pool, in this call's context (request id, audit target)."""
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self.pool, call)

    @rpc(Scope.write)
    async def CreateCollection(self, request: Any, context: grpc.aio.ServicerContext) -> search_pb2.Collection:  # noqa: N802
        model = request.model if request.HasField("model") else None
        row = await self._run(self.service.create, request.name, model, list(request.keyword_fields))
        return collection_message({**row, "count": 0})

    @rpc(Scope.read)
    async def ListCollections(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        rows = await self._run(self.service.collections)
        return search_pb2.ListCollectionsResponse(collections=[collection_message(r) for r in rows])

    @rpc(Scope.admin)
    async def DeleteCollection(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        out = await self._run(self.service.delete, request.name)
        return search_pb2.DeleteCollectionResponse(deleted=out["deleted"])

    @rpc(Scope.write)
    async def Ingest(self, request: Any, context: grpc.aio.ServicerContext) -> search_pb2.IngestResponse:  # noqa: N802
        check_count(len(request.items), self.limits.max_items, "IngestStream")
        sources, payloads = sources_of(request.items)
        out = await self._run(self.service.ingest_sources, request.collection, sources, payloads)
        return search_pb2.IngestResponse(ids=out["ids"], count=out["count"])

    @rpc(Scope.write)
    async def IngestStream(  # noqa: N802
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> search_pb2.IngestResponse:
        collection: str | None = None
        ids: list[str] = []
        count = 0
        sources: list[bytes | str] = []
        payloads: list[dict[str, Any]] = []
        limit, chunk = self.limits.grpc_max_stream_items, self.limits.max_items

        async def flush(n: int) -> None:
            """Store the first ``n`` items received (checked together, as one Ingest)."""
            nonlocal count
            out = await self._run(self.service.ingest_sources, collection, sources[:n], payloads[:n])
            ids.extend(out["ids"])
            count = out["count"]
            del sources[:n], payloads[:n]

        async for request in requests:
            if collection is None:
                collection = request.collection
            elif request.collection != collection:
                raise InvalidInput(
                    f"one IngestStream ingests into one collection: {collection!r}, not {request.collection!r}"
                )
            more, their = sources_of(request.items)
            if len(ids) + len(sources) + len(more) > limit:
                raise PayloadTooLarge(f"the stream sent over {limit} items, the limit of one call")
            sources.extend(more)
            payloads.extend(their)
            while len(sources) >= chunk:
                await flush(chunk)
        if sources:
            await flush(len(sources))
        if not ids:
            raise InvalidInput("the stream sent no item")
        return search_pb2.IngestResponse(ids=ids, count=count)

    @rpc(Scope.read)
    async def Search(self, request: Any, context: grpc.aio.ServicerContext) -> search_pb2.SearchResponse:  # noqa: N802
        kind = request.WhichOneof("query")
        query = {"text": None, "image": None, "item_id": None}
        if kind is not None:
            query[kind] = getattr(request, kind)
        top_k = request.top_k if request.HasField("top_k") else 10
        where = from_values(request.filter, "filter") or None
        threshold = request.score_threshold if request.HasField("score_threshold") else None
        version = request.model_version if request.HasField("model_version") else None
        found = await self._run(
            self.service.find,
            request.collection,
            query["text"],
            query["image"],
            query["item_id"],
            top_k,
            where,
            threshold,
            version,
        )
        response = search_pb2.SearchResponse(
            results=[
                search_pb2.SearchResult(
                    id=r.id,
                    score=r.score,
                    payload={k: to_value(v) for k, v in r.payload.items()},
                    blob_uri=r.blob_uri,
                    model=common_pb2.ModelRef(model=r.model, version=r.version),
                )
                for r in found
            ]
        )
        if found:
            response.model.CopyFrom(response.results[0].model)
        return response


def servicers(limits: SearchSettings) -> Callable[[Any, GrpcEdge], list[SearchRpc]]:
    """``gateway(grpc=...)`` of the search service."""
    return lambda service, edge: [SearchRpc(service, edge, limits)]
