"""Re-embed every item of a collection with another model version, into a staging collection that the
search service swaps in atomically when it is complete.

A pipeline of small stages: ``pages`` (reader: the live items, a page at a time) → ``embed_page``
(mapper: originals from the blob store, embedded by the embedding service pinned to the version) →
``write_page`` (writer: vectors streamed to the search service) → ``run_reindex`` (runner). Every
write is an idempotent upsert by item id, so a job that is killed and redelivered runs again from
the start and ends with the same items, none lost, none duplicated.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from infra.blobs import BlobStore
from infra.settings import Settings
from services.client import EmbeddingClient, raise_for_status

Progress = Callable[[int, str], None]


@dataclass(frozen=True)
class ReindexResult:
    collection: str
    version: str
    physical: str
    count: int
    dropped: list[str]


class SearchAdmin:
    """The search service's rebuild API."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=300)

    def post(self, route: str, **body: Any) -> Any:
        resp = self.http.post(route, json=body)
        raise_for_status(resp)
        return resp.json()


def pages(search: SearchAdmin, collection: str, size: int) -> Iterator[list[dict[str, Any]]]:
    offset = 0
    while page := search.post("/builds/items", collection=collection, offset=offset, limit=size):
        yield page
        offset += len(page)


def embed_page(page: list[dict[str, Any]], blobs: BlobStore, embedder: EmbeddingClient, version: str) -> np.ndarray:
    images = [blobs.get(item["payload"]["blob"]) for item in page]
    emb = embedder.embed_image(images, model_version=version)
    if set(emb.versions) != {version}:
        raise RuntimeError(f"asked for version {version}, embedded by {set(emb.versions)}")
    return emb.vectors


def write_page(
    search: SearchAdmin, collection: str, physical: str, page: list[dict[str, Any]], vectors: np.ndarray
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
    search: SearchAdmin,
    embedder: EmbeddingClient,
    blobs: BlobStore,
    page_size: int = 64,
    grace_s: float = 60.0,
    progress: Progress | None = None,
    inflight: int = 3,
) -> ReindexResult:
    build = search.post("/builds/start", collection=collection, version=version)
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


def run_ingest(
    collection: str,
    uris: list[str],
    search: SearchAdmin,
    page_size: int = 32,
    progress: Progress | None = None,
) -> int:
    """Bulk ingest: the search service reads each URI (a shared path or an fsspec URI) a page at a time.
    Idempotent by content, so a redelivered job ends with the same items."""
    count = 0
    for start in range(0, len(uris), page_size):
        page = uris[start : start + page_size]
        out = search.post("/ingest", collection=collection, items=[{"uri": u, "payload": {"uri": u}} for u in page])
        count = int(out["count"])
        if progress is not None:
            progress(start + len(page), "ingesting")
    return count


def enqueue_reindex_of_model(settings: Settings, model: str) -> list[tuple[str, Any]]:
    """Enqueue a reindex of every collection that uses ``model`` (its production version changed).

    Returns (collection, Celery AsyncResult) pairs; raises ``httpx.HTTPError`` when the search
    service cannot be reached."""
    from workers.app import make_app

    collections = SearchAdmin(settings.worker.search_url).post("/collections/list")
    app = make_app(settings)
    return [(c["name"], app.send_task("vlmops.reindex", args=[c["name"]])) for c in collections if c["model"] == model]
