"""Bulk ingest: ``read`` (reader: the originals at each URI, read by the worker itself within the
:class:`~infra.uris.UriPolicy` an operator configured) → ``run_ingest`` (writer and runner: pages of
images sent to the search service, which checks, stores, embeds and indexes them). Every URI is
checked before the first page is read. Idempotent by content, so a redelivered job ends with the
same items."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from infra.clients import SearchClient
from infra.images import to_base64
from infra.uris import UriPolicy

Progress = Callable[[int, str], None]


def read(uris: list[str], policy: UriPolicy, page_size: int, max_bytes: int) -> Iterator[list[tuple[str, bytes]]]:
    """Pages of (uri, bytes); the next page is read while the current one is sent (one page ahead)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-read") as pool:
        pending: Future[list[tuple[str, bytes]]] | None = None
        for start in range(0, len(uris), page_size):
            page = uris[start : start + page_size]
            ahead = pool.submit(lambda page=page: [(u, policy.read(u, max_bytes)) for u in page])
            if pending is not None:
                yield pending.result()
            pending = ahead
        if pending is not None:
            yield pending.result()


def run_ingest(
    collection: str,
    uris: list[str],
    search: SearchClient,
    policy: UriPolicy,
    page_size: int = 32,
    max_bytes: int = 20 * 1024 * 1024,
    progress: Progress | None = None,
) -> int:
    for n, uri in enumerate(uris):
        policy.check(uri, f"uri {n}")
    count, done = 0, 0
    for page in read(uris, policy, page_size, max_bytes):
        items = [{"image": to_base64(data), "payload": {"uri": uri}} for uri, data in page]
        count = int(search.post("/ingest", collection=collection, items=items)["count"])
        done += len(page)
        if progress is not None:
            progress(done, "ingesting")
    return count
