"""Bulk ingest from where the images live: a list of URIs, or every file under a folder (a local path, a
shared volume, or an object-store prefix), read by the worker itself within the
:class:`~infra.uris.UriPolicy` an operator configured for the search service.

A pipeline of stages on threads of their own, with a bounded queue between them (as the reindex job), so
memory stays at a few pages whatever the number of images:
- ``read_pages`` (reader): a page of URIs read, each image's content hash computed, repeats in the page
  dropped;
- the runner: asks the search service which items the collection holds already (``/ingest/known``; a
  killed job run again skips what it stored, by content hash) and which versions a new item must be
  embedded by, then embeds the new images with each of them in the worker (each image decoded once a
  version; one that does not decode is reported and the job goes on);
- ``write_page`` (writer): the images put in the blob store, then the page's vectors sent as one float32
  buffer per version (``/ingest/vectors``). The service writes them under the collection's lock only if
  they cover every version the collection is embedded by at that moment (a rebuild that started meanwhile
  is named in ``missing``: the writer embeds for it too and sends again), so the version invariant holds.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol, TypeVar

import fsspec
import numpy as np

from infra.blobs import BlobStore, content_hash
from infra.clients import SearchClient
from infra.errors import InvalidInput, NotFound, VlmopsError
from infra.images import decode_image
from infra.uris import UriPolicy
from infra.vector_index import point_id
from workers.pipelines.reindex import pack
from workers.pipelines.stages import StageClock, ahead

log = logging.getLogger("vlmops.ingest")

Progress = Callable[[int, str], None]
MAX_ERRORS = 20  # rejected images named in the job's result (all are counted)
T = TypeVar("T")
MAX_RESENDS = 5  # times a page is sent again because a build started between embedding and writing


class PageEmbedder(Protocol):
    """Embeds the images that decode, with one model version."""

    version: str

    def embed_valid(
        self, blobs: Sequence[bytes], names: Sequence[str] | None = None
    ) -> tuple[np.ndarray, list[int], dict[int, str]]: ...


@dataclass
class Page:
    uris: list[str]
    blobs: list[bytes]
    keys: list[str]
    errors: list[tuple[str, str]] = field(default_factory=list)  # (uri, what was wrong)
    repeats: int = 0  # images of the page already read under another URI of it


@dataclass(frozen=True)
class IngestResult:
    collection: str
    ingested: int  # URIs handled
    stored: int  # images written (new to the collection)
    skipped: int  # already in the collection (a job run again), or repeated in the input
    rejected: int  # unreadable, too large, or not an image
    errors: list[dict[str, str]]  # the first MAX_ERRORS rejections: uri and error
    count: int  # items in the collection at the end


def walk(folder: str) -> Iterator[str]:
    """Every file under ``folder``, in sorted order, lazily (a local folder is listed one directory at a
    time; an object-store prefix through fsspec)."""
    if "://" in folder and not folder.startswith("file://"):
        fs, root = fsspec.core.url_to_fs(folder)
        protocol = folder.split("://", 1)[0]
        for path in sorted(fs.find(root)):
            yield f"{protocol}://{path}"
        return
    root = folder.removeprefix("file://")
    with os.scandir(root) as entries:
        ordered = sorted(entries, key=lambda e: e.name)
    for entry in ordered:
        if entry.is_dir(follow_symlinks=False):
            yield from walk(entry.path)
        elif entry.is_file(follow_symlinks=False):
            yield entry.path


def read_pages(uris: Iterable[str], policy: UriPolicy, page_size: int, max_bytes: int) -> Iterator[Page]:
    it = iter(uris)
    while chunk := list(islice(it, page_size)):
        yield read_page(chunk, policy, max_bytes)


def read_page(uris: Sequence[str], policy: UriPolicy, max_bytes: int) -> Page:
    page = Page([], [], [])
    seen: set[str] = set()
    for uri in uris:
        try:
            data = policy.read(uri, max_bytes, what=f"uri {uri[:300]!r}")
        except (InvalidInput, NotFound) as exc:  # gone since it was listed, over the limit
            page.errors.append((uri, str(exc)))
            continue
        key = content_hash(data)
        if key in seen:
            page.repeats += 1
            continue
        seen.add(key)
        page.uris.append(uri)
        page.blobs.append(data)
        page.keys.append(key)
    return page


_STORES: dict[str, BlobStore] = {}


def put_blobs(root: str, blobs: Sequence[bytes]) -> None:
    """Store ``blobs`` in the blob store at ``root`` (one store object per root in this process)."""
    store = _STORES.get(root) or _STORES.setdefault(root, BlobStore(root))
    for data in blobs:
        store.put(data)


class HelperProcess:
    """One process for the file work of this worker's ingest jobs, started on first use and kept for the
    next job (its start, an interpreter importing the readers, is otherwise a fixed cost of every job:
    about half a second on 2 cores); started again if it died."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        with self._lock:
            for attempt in (1, 2):
                if self._pool is None:
                    self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
                try:
                    return self._pool.submit(fn, *args)
                except BrokenProcessPool:  # the helper died (killed, out of memory): a new one
                    self._pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = None
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None


HELPER = HelperProcess()  # this worker process's helper, shared by its jobs (one at a time: -P solo)


class FileWork:
    """The file work of a bulk ingest (reading the originals, hashing them, writing them to the blob store)
    in a helper process (``helper``, default: this worker's :data:`HELPER`), so it shares no interpreter lock
    with the model's thread: on 2 cores, the same work on threads of the worker took the model's decode,
    preprocess and forward from 2,570 to 1,360 images/s (Python's per-item work in the reader and writer
    held the lock the model's Python-side preprocessing needs)."""

    def __init__(self, policy: UriPolicy, max_bytes: int, blob_root: str, helper: HelperProcess | None = None) -> None:
        self.policy = policy
        self.max_bytes = max_bytes
        self.blob_root = blob_root
        self.helper = helper or HELPER
        self._queued: list[Future[Page]] = []

    def pages(self, uris: Iterable[str], page_size: int, depth: int) -> Iterator[Page]:
        """The pages of ``uris``, read in the helper, up to ``depth`` ahead of the consumer."""
        it = iter(uris)
        queued = self._queued
        while True:
            while len(queued) < depth + 1 and (chunk := list(islice(it, page_size))):
                queued.append(self.helper.submit(read_page, chunk, self.policy, self.max_bytes))
            if not queued:
                return
            yield queued.pop(0).result()

    def put(self, blobs: Sequence[bytes]) -> None:
        self.helper.submit(put_blobs, self.blob_root, list(blobs)).result()

    def close(self) -> None:
        """This job's reads still queued are cancelled and the running one waited for; the helper stays."""
        queued = list(self._queued)
        for future in queued:
            future.cancel()
        wait(queued)
        self._queued.clear()


def embed_page(
    blobs: Sequence[bytes],
    names: Sequence[str],
    versions: Sequence[str],
    embedder_for: Callable[[str], PageEmbedder],
) -> tuple[dict[str, np.ndarray], list[int], dict[int, str]]:
    """``blobs`` embedded by each version: the images that decode (``kept``) and why the others did not."""
    first = embedder_for(versions[0])
    vectors, kept, errors = first.embed_valid(blobs, names)
    out = {first.version: vectors}
    for version in versions[1:]:  # a rebuild is running: its version too
        out[version] = embedder_for(version).embed_valid([blobs[i] for i in kept])[0]
    return out, kept, errors


def write_page(
    search: SearchClient,
    put: Callable[[Sequence[bytes]], None],
    collection: str,
    page: Page,
    vectors: dict[str, np.ndarray],
    embedder_for: Callable[[str], PageEmbedder],
) -> int:
    """Put the page's images in the blob store and index them; the collection's count after."""
    put(page.blobs)
    payloads = [{"uri": uri} for uri in page.uris]
    for _ in range(MAX_RESENDS):
        body = {v: pack(rows) for v, rows in vectors.items()}
        out = search.post(
            "/ingest/vectors", collection=collection, blobs=page.keys, payloads=payloads, vectors_b64=body
        )
        if not out["missing"]:
            return int(out["count"])
        for version in out["missing"]:  # a rebuild started since the page was embedded
            vectors[version] = embedder_for(version).embed_valid(page.blobs)[0]
    raise VlmopsError(f"the versions of {collection!r} kept changing: {MAX_RESENDS} sends of one page refused")


def run_ingest(
    collection: str,
    uris: Iterable[str],
    search: SearchClient,
    files: FileWork,
    embedder_for: Callable[[str], PageEmbedder],
    page_size: int = 1024,
    progress: Progress | None = None,
    inflight: int = 2,
) -> IngestResult:
    """Ingest the images at ``uris`` (read and stored by ``files``, within its policy);
    ``embedder_for(version)`` embeds with a version of the collection's model. Idempotent: run again, it
    stores nothing twice."""
    clock = StageClock()
    done = stored = skipped = rejected = 0
    errors: list[dict[str, str]] = []
    count = 0
    writes: list[Future[int]] = []

    def reject(uri: str, error: str) -> None:
        nonlocal rejected
        rejected += 1
        if len(errors) < MAX_ERRORS:
            errors.append({"uri": uri, "error": error})
        log.info("ingest %s: rejected %s: %s", collection, uri[:300], error)

    def settle(limit: int) -> None:
        nonlocal count
        while len(writes) > limit or (writes and writes[0].done()):
            count = writes.pop(0).result()  # a failed write fails the job here

    def checked(pages: Iterator[Page]) -> Iterator[tuple[Page, dict[str, Any] | None]]:
        """Each page with what the collection holds of it and the versions it needs now (asked on the
        reader's side, so the question overlaps the embedding of the page before; a build that starts after
        the answer is caught when the page is written)."""
        for page in pages:
            ids = [point_id(k) for k in page.keys]
            yield page, search.post("/ingest/known", collection=collection, ids=ids) if ids else None

    # the keys of the last pages sent: a page's known-items question can be answered before the pages just
    # ahead of it are written (at most 2 x inflight + 1 of them), so a repeat across them is caught here
    recent: deque[set[str]] = deque(maxlen=2 * inflight + 2)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-write") as writer:
        pipeline = ahead(checked(files.pages(uris, page_size, inflight)), inflight, "ingest-known")
        while True:
            with clock("wait for reader"):
                step = next(pipeline, None)
            if step is None:
                break
            page, out = step
            for uri, error in page.errors:
                reject(uri, error)
            done += len(page.uris) + len(page.errors) + page.repeats
            skipped += page.repeats
            if page.keys and out is not None:
                known = set(out["known"])
                # pages this job sent that may not be written yet (the question was asked ahead of them)
                sent = set().union(*recent)
                new = [i for i, key in enumerate(page.keys) if point_id(key) not in known and key not in sent]
                recent.append({page.keys[i] for i in new})
                skipped += len(page.keys) - len(new)
                with clock("embed"):
                    blobs, names = [page.blobs[i] for i in new], [page.uris[i] for i in new]
                    vectors, kept, bad = embed_page(blobs, names, out["versions"], embedder_for)
                for j, error in bad.items():
                    reject(page.uris[new[j]], error)
                todo = Page([page.uris[new[j]] for j in kept], [page.blobs[new[j]] for j in kept], [])
                todo.keys = [page.keys[new[j]] for j in kept]
                if todo.keys:
                    writes.append(writer.submit(write_page, search, files.put, collection, todo, vectors, embedder_for))
                    stored += len(todo.keys)
            with clock("wait for writer"):
                settle(inflight)
            if progress is not None:
                progress(done, "ingesting")
        with clock("wait for writer"):
            settle(0)
    if not count:
        count = int(search.collection(collection)["count"])
    log.info(
        "ingest %s: %d uris, %d stored, %d skipped, %d rejected; %s",
        collection,
        done,
        stored,
        skipped,
        rejected,
        clock.summary(),
    )
    return IngestResult(collection, done, stored, skipped, rejected, errors, count)


class ServiceEmbedder:
    """The embedding service as a bulk job's embedder (``VLMOPS_WORKER__EMBED=service``): each image is
    decoded here to be checked, then the ones that decode are embedded by the service, pinned to
    ``version`` (it answers with the version it used)."""

    def __init__(
        self, embed: Callable[[Sequence[bytes]], np.ndarray], version: str, max_bytes: int, max_pixels: int
    ) -> None:
        self.embed = embed
        self.version = version
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels

    def embed_valid(
        self, blobs: Sequence[bytes], names: Sequence[str] | None = None
    ) -> tuple[np.ndarray, list[int], dict[int, str]]:
        kept: list[int] = []
        errors: dict[int, str] = {}
        for i, data in enumerate(blobs):
            try:
                what = names[i] if names else f"item {i}"
                decode_image(data, max_bytes=self.max_bytes, max_pixels=self.max_pixels, what=what)
            except InvalidInput as exc:
                errors[i] = str(exc)
                continue
            kept.append(i)
        vectors = self.embed([blobs[i] for i in kept]) if kept else np.zeros((0, 0), np.float32)
        return vectors, kept, errors
