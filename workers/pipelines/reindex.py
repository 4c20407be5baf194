"""Re-embed every item of a collection with another model version, into a staging collection that the
search service swaps in atomically when it is complete.

A pipeline of small stages, each on a thread of its own with a bounded queue between them, so reading,
embedding and writing overlap and memory stays at a few pages whatever the collection's size:
- ``read_pages`` (reader): the live items a page at a time, following the index's scroll cursor (the
  collection is read once in all), with their originals from the blob store;
- the mapper: the page's images embedded by the pinned version, in the worker
  (:class:`workers.embedder.VersionEmbedder`, the default) or by the embedding service (``remote``);
- ``write_vectors`` (writer): the page's vectors sent to the search service as one little-endian float32
  buffer, written to the staging collection in one upsert;
- ``run_reindex`` (runner).

Every write is an idempotent upsert by item id, so a job that is killed and redelivered runs again from
the start and ends with the same items, none lost, none duplicated.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from infra.blobs import BlobStore
from infra.clients import EmbeddingClient, SearchClient
from workers.pipelines.stages import StageClock, ahead

log = logging.getLogger("vlmops.reindex")

Progress = Callable[[int, str], None]
Mapper = Callable[[Sequence[bytes]], np.ndarray]


@dataclass(frozen=True)
class ReindexResult:
    collection: str
    version: str
    physical: str
    count: int
    dropped: list[str]
    shadow: bool = False  # a shadow build: filled and kept beside the live collection, not swapped in


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]  # id and payload (the payload names the item's blob)
    blobs: list[bytes]


def pages(search: SearchClient, collection: str, size: int) -> Iterator[list[dict[str, Any]]]:
    cursor: str | None = None
    while True:
        out = search.post("/builds/items", collection=collection, cursor=cursor, limit=size)
        if out["items"]:
            yield out["items"]
        cursor = out["next_cursor"]
        if cursor is None:
            return


def read_pages(search: SearchClient, blobs: BlobStore, collection: str, size: int) -> Iterator[Page]:
    for items in pages(search, collection, size):
        yield Page(items, [blobs.get(item["payload"]["blob"]) for item in items])


def remote(embedder: EmbeddingClient, version: str) -> Mapper:
    """The embedding service as the mapper (pinned to ``version``; it answers with the version it used)."""

    def embed(images: Sequence[bytes]) -> np.ndarray:
        emb = embedder.embed_image(images, model_version=version)
        if set(emb.versions) != {version}:
            raise RuntimeError(f"asked for version {version}, embedded by {set(emb.versions)}")
        return emb.vectors

    return embed


def pack(vectors: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(vectors, dtype="<f4").tobytes()).decode()


def write_vectors(
    search: SearchClient, collection: str, physical: str, items: list[dict[str, Any]], vectors: np.ndarray
) -> int:
    body = {
        "collection": collection,
        "physical": physical,
        "ids": [item["id"] for item in items],
        "payloads": [item["payload"] for item in items],
        "vectors_b64": pack(vectors),
    }
    return int(search.post("/builds/write_vectors", **body)["count"])


def run_reindex(
    collection: str,
    version: str,
    search: SearchClient,
    embed: Mapper,
    blobs: BlobStore,
    page_size: int = 1024,
    grace_s: float = 60.0,
    progress: Progress | None = None,
    inflight: int = 2,
    replace: bool = False,
    swap: bool = True,
) -> ReindexResult:
    """``embed`` maps a page's image files to the vectors of ``version``; ``inflight`` pages may wait
    between two stages. ``replace``: a build of another version that no job drives any more is abandoned
    first. ``swap=False``: a *shadow* build: the staging collection is filled and kept (new ingests go on
    reaching it), searchable by version beside the live one, never swapped in by this job."""
    clock = StageClock()
    with clock("start"):
        build = search.post("/builds/start", collection=collection, version=version, replace=replace)
    physical = build["physical"]
    done = 0
    writes: list[Future[int]] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reindex-write") as writer:
        pipeline = ahead(read_pages(search, blobs, collection, page_size), inflight, "reindex-read")
        while True:
            with clock("wait for reader"):
                page = next(pipeline, None)
            if page is None:
                break
            with clock("embed"):
                vectors = embed(page.blobs)
            writes.append(writer.submit(write_vectors, search, collection, physical, page.items, vectors))
            done += len(page.items)
            with clock("wait for writer"):
                while len(writes) > inflight or (writes and writes[0].done()):
                    writes.pop(0).result()  # a failed write fails the job here
            if progress is not None:
                progress(done, "embedding")
        with clock("wait for writer"):
            for future in writes:
                future.result()
    if progress is not None:
        progress(done, "embedding")
    if not swap:
        log.info("shadow build of %s by version %s: %d items; %s", collection, version, done, clock.summary())
        if progress is not None:
            progress(done, "shadow")
        return ReindexResult(collection, version, physical, done, [], shadow=True)
    with clock("finish (completeness check, swap)"):
        out = search.post("/builds/finish", collection=collection, physical=physical, grace_s=grace_s)
    log.info("reindex %s to version %s: %d items; %s", collection, version, done, clock.summary())
    if progress is not None:
        progress(int(out["count"]), "swapped")
    return ReindexResult(collection, version, out["physical"], int(out["count"]), list(out["dropped"]))
