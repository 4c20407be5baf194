"""Re-embed every item of a collection with another model version, into a staging collection that the
search service swaps in atomically when it is complete.

A pipeline of small stages: ``pages`` (reader: the live items, a page at a time, following the index's
scroll cursor, so the collection is read once in all) → ``embed_page`` (mapper: originals from the
blob store, embedded by the embedding service pinned to the version) → ``write_page`` (writer:
vectors streamed to the search service) → ``run_reindex`` (runner). Every write is an idempotent
upsert by item id, so a job that is killed and redelivered runs again from the start and ends with
the same items, none lost, none duplicated.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np

from infra.blobs import BlobStore
from infra.clients import EmbeddingClient, SearchClient

Progress = Callable[[int, str], None]


@dataclass(frozen=True)
class ReindexResult:
    collection: str
    version: str
    physical: str
    count: int
    dropped: list[str]


def pages(search: SearchClient, collection: str, size: int) -> Iterator[list[dict[str, Any]]]:
    cursor: str | None = None
    while True:
        out = search.post("/builds/items", collection=collection, cursor=cursor, limit=size)
        if out["items"]:
            yield out["items"]
        cursor = out["next_cursor"]
        if cursor is None:
            return


def embed_page(page: list[dict[str, Any]], blobs: BlobStore, embedder: EmbeddingClient, version: str) -> np.ndarray:
    images = [blobs.get(item["payload"]["blob"]) for item in page]
    emb = embedder.embed_image(images, model_version=version)
    if set(emb.versions) != {version}:
        raise RuntimeError(f"asked for version {version}, embedded by {set(emb.versions)}")
    return emb.vectors


def write_page(
    search: SearchClient, collection: str, physical: str, page: list[dict[str, Any]], vectors: np.ndarray
) -> int:
    points = [
        {
            "id": item["id"],
            "vector_b64": base64.b64encode(vec.astype("<f4").tobytes()).decode(),
            "payload": item["payload"],
        }
        for item, vec in zip(page, vectors, strict=True)
    ]
    return int(search.post("/builds/write", collection=collection, physical=physical, points=points)["count"])


def run_reindex(
    collection: str,
    version: str,
    search: SearchClient,
    embedder: EmbeddingClient,
    blobs: BlobStore,
    page_size: int = 64,
    grace_s: float = 60.0,
    progress: Progress | None = None,
    inflight: int = 3,
    replace: bool = False,
) -> ReindexResult:
    """``replace``: a build of another version that no job drives any more is abandoned first."""
    build = search.post("/builds/start", collection=collection, version=version, replace=replace)
    done = 0

    def step(page: list[dict[str, Any]]) -> int:
        write_page(search, collection, build["physical"], page, embed_page(page, blobs, embedder, version))
        return len(page)

    # up to ``inflight`` pages at once: blob reads, embedding (batched by the service) and index
    # writes of different pages overlap; the swap checks completeness, so order does not matter
    with ThreadPoolExecutor(max_workers=inflight, thread_name_prefix="reindex") as pool:
        running: set[Future[int]] = set()
        for page in pages(search, collection, page_size):
            running.add(pool.submit(step, page))
            if len(running) >= inflight:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                done += sum(f.result() for f in finished)
                if progress is not None:
                    progress(done, "embedding")
        done += sum(f.result() for f in running)
    if progress is not None:
        progress(done, "embedding")
    out = search.post("/builds/finish", collection=collection, physical=build["physical"], grace_s=grace_s)
    if progress is not None:
        progress(done, "swapped")
    return ReindexResult(collection, version, out["physical"], int(out["count"]), list(out["dropped"]))
