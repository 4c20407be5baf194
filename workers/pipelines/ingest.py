"""Bulk ingest: ``read`` (reader: the originals at each URI, a shared volume's path or an fsspec URI,
read by the worker itself) → ``run_ingest`` (writer and runner: pages of images sent to the search
service, which checks, stores, embeds and indexes them). The search service never reads a path on
request. Idempotent by content, so a redelivered job ends with the same items."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from infra.blobs import read_uri
from infra.clients import SearchClient
from infra.images import to_base64

Progress = Callable[[int, str], None]


def _read_page(uris: list[str], max_bytes: int) -> list[tuple[str, bytes]]:
    return [(uri, read_uri(uri, max_bytes)) for uri in uris]


def read(uris: list[str], page_size: int, max_bytes: int) -> Iterator[list[tuple[str, bytes]]]:
    """Pages of (uri, bytes); the next page is read while the current one is sent (one page ahead)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-read") as pool:
        pending: Future[list[tuple[str, bytes]]] | None = None
        for start in range(0, len(uris), page_size):
            ahead = pool.submit(_read_page, uris[start : start + page_size], max_bytes)
            if pending is not None:
                yield pending.result()
            pending = ahead
        if pending is not None:
            yield pending.result()


def run_ingest(
    collection: str,
    uris: list[str],
    search: SearchClient,
    page_size: int = 32,
    max_bytes: int = 20 * 1024 * 1024,
    progress: Progress | None = None,
) -> int:
    count, done = 0, 0
    for page in read(uris, page_size, max_bytes):
        items = [{"image": to_base64(data), "payload": {"uri": uri}} for uri, data in page]
        count = int(search.post("/ingest", collection=collection, items=items)["count"])
        done += len(page)
        if progress is not None:
            progress(done, "ingesting")
    return count
