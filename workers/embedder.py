"""The mapper of the bulk jobs: images embedded in the worker by the exact version a collection is built for.

Why in the worker and not through the embedding service: measured with the toy CLIP on 2 cores
(``bench.pipeline_stages``), a model that embeds 3,200 images/s spends 312 µs an image, and a trip through
the service adds base64 and JSON of the images, a second decode (62 µs), vectors as JSON (77 µs) and an
HTTP round trip per page: the reindex job ran at 0.15 of the raw forward. A worker that holds the version
itself reads the originals, decodes each once and embeds them with the same code the service runs
(``decode_image`` → ``preprocess`` → ``encode_pixels``, at the precision the embedding service would use on
this device), so its vectors are the service's (a test compares them). clip-retrieval's inference jobs do
the same on a GPU worker pool. The services keep their batching for online traffic.

The version is loaded from the registry (its artifact store: nothing is read by path from another
process) and kept for the next job; at most ``capacity`` versions are held.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from threading import Lock

import numpy as np
import torch

from infra.errors import InvalidInput
from infra.images import decode_image
from infra.settings import Settings, resolve_device, resolve_precision
from infra.threads import one_torch_thread
from registry.families.clip import ClipModel
from registry.store import RegistryStore
from workers import prepare

log = logging.getLogger("vlmops.embedder")


class VersionEmbedder:
    """Embeds image files with one pinned version of a CLIP model."""

    def __init__(
        self,
        model: ClipModel,
        version: str,
        max_bytes: int,
        max_pixels: int,
        batch: int = 64,
        threads: int | None = None,
        processes: int = 0,
    ) -> None:
        """``threads``: torch's intra-op threads while this embeds (None: left as they are); ``processes``:
        decode, resize and crop in that many processes (``workers.prepare``: a GPU worker's), the float
        conversion and normalisation on the model's device; 0: all of it on one thread beside the model."""
        self.model = model
        self.threads = threads
        geometry = model.pixel_geometry() if processes else None
        self.processes = processes if geometry is not None else 0
        self._pool = prepare.pool(self.processes, geometry) if geometry is not None and processes else None
        self.version = version
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.batch = batch

    def __call__(self, blobs: Sequence[bytes]) -> np.ndarray:
        """Unit vectors (float32, one row per image) of ``blobs``, each decoded once; ``batch`` images go
        through the model at a time, so a page of any size holds one batch of pixels. An image that does
        not decode fails the call (a collection's blobs were checked when they were ingested)."""
        vectors, _, errors = self.embed_valid(blobs)
        if errors:
            raise InvalidInput(next(iter(errors.values())))
        return vectors

    def embed_valid(
        self, blobs: Sequence[bytes], names: Sequence[str] | None = None
    ) -> tuple[np.ndarray, list[int], dict[int, str]]:
        """``(vectors, kept, errors)``: the vectors of the images that decode (a row per index in ``kept``)
        and, for each one that does not, what was wrong with it (a bulk ingest reports it and goes on);
        ``names`` name the images in those messages.

        Two stages overlap: a preparing thread decodes and preprocesses batch i+1 (with one torch thread of
        its own; PIL and torch release the interpreter lock) while the calling thread runs batch i through
        the model."""
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)  # on the calling thread too (OpenMP's count is per thread)
        starts = range(0, len(blobs), self.batch)
        out: list[np.ndarray] = []
        kept: list[int] = []
        errors: dict[int, str] = {}
        depth = 2 if self._pool is not None else 1  # two batches in the processes: they never wait
        ahead = [self._preparer.submit(self._prepare, blobs, start, names) for start in starts[:depth]]
        for n, _ in enumerate(starts):
            pixels, batch_kept, batch_errors = ahead.pop(0).result()
            if n + depth < len(starts):
                ahead.append(self._preparer.submit(self._prepare, blobs, starts[n + depth], names))
            kept += batch_kept
            errors |= batch_errors
            if pixels is not None:
                out.append(self.model.encode_pixels(pixels).cpu().numpy().astype(np.float32, copy=False))
        vectors = np.concatenate(out) if out else np.zeros((0, self.model.embed_dim), np.float32)
        return vectors, kept, errors

    def _prepare(
        self, blobs: Sequence[bytes], start: int, names: Sequence[str] | None
    ) -> tuple[torch.Tensor | None, list[int], dict[int, str]]:
        """One batch decoded and preprocessed: its pixels (None: nothing decoded), kept indices, errors."""
        if self._pool is not None:
            prepared = self._prepare_in_processes(blobs, start, names)
            if prepared is not None:
                return prepared
        images, kept, errors = [], [], {}
        for i, data in enumerate(blobs[start : start + self.batch], start):
            what = names[i] if names else f"item {i}"
            try:
                images.append(decode_image(data, max_bytes=self.max_bytes, max_pixels=self.max_pixels, what=what))
            except InvalidInput as exc:
                errors[i] = str(exc)
                continue
            kept.append(i)
        return (self.model.preprocess_batch(images) if images else None), kept, errors

    def _prepare_in_processes(
        self, blobs: Sequence[bytes], start: int, names: Sequence[str] | None
    ) -> tuple[torch.Tensor | None, list[int], dict[int, str]] | None:
        """The batch split over the preparing processes; its uint8 pixels made floats and normalised on the
        model's device. ``None``: a chunk came back in a shape the batch form cannot hold."""
        assert self._pool is not None
        end = min(start + self.batch, len(blobs))
        step = -(-(end - start) // self.processes)
        futures = [
            self._pool.submit(
                prepare.prepare_chunk,
                list(blobs[i : min(i + step, end)]),
                i,
                list(names[i : min(i + step, end)]) if names else None,
                self.max_bytes,
                self.max_pixels,
            )
            for i in range(start, end, step)
        ]
        arrays, kept, errors = [], [], {}
        for future in futures:
            array, chunk_kept, chunk_errors = future.result()
            if array is None and chunk_kept:
                return None
            if array is not None:
                arrays.append(array)
            kept += chunk_kept
            errors |= chunk_errors
        if not arrays:
            return None, kept, errors
        pixels = torch.from_numpy(np.concatenate(arrays))
        if self.model.device != "cpu":
            pixels = pixels.pin_memory().to(self.model.device, non_blocking=True)
        return self.model.normalize_uint8(pixels), kept, errors

    def close(self) -> None:
        """Stop the preparing processes (an embedder the cache let go)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    @functools.cached_property
    def _preparer(self) -> ThreadPoolExecutor:
        threads = 2 if self._pool is not None else 1  # with processes: one batch gathered while one is cut
        return ThreadPoolExecutor(threads, thread_name_prefix=f"prepare-v{self.version}", initializer=one_torch_thread)


def cpu_threads(model: ClipModel, cpus: int | None = None, sample: int = 8) -> int:
    """Torch threads for a job's model on CPU. The preparing thread needs a core of its own, so the model
    gets one less than the CPUs, unless its forward scales with threads nearly linearly (at least 0.8 x
    the CPUs faster on all of them, timed on a few images): then it is the job's bottleneck and takes them
    all. Measured on 2 cores: ViT-B-32's forward runs 1.8-1.95x faster on 2 threads (a job at 0.55 of raw
    on one); the toy CLIP's 1.35-1.45x, and a job with 2 threads ran slower than with 1 (the preparing
    thread lost its core)."""
    cpus = cpus or os.cpu_count() or 1
    if cpus <= 1:
        return 1
    pixels = torch.randn(sample, 3, model.image_size, model.image_size)
    seconds = {}
    before = torch.get_num_threads()
    try:
        for n in (1, cpus):
            torch.set_num_threads(n)
            model.encode_pixels(pixels)  # warm: this thread count's first run
            runs = []
            for _ in range(2):  # the better of two: a shared machine's noise only ever slows a run
                t0 = time.perf_counter()
                model.encode_pixels(pixels)
                runs.append(time.perf_counter() - t0)
            seconds[n] = min(runs)
    finally:
        torch.set_num_threads(before)
    return cpus if seconds[1] / seconds[cpus] >= 0.8 * cpus else cpus - 1


class EmbedderCache:
    """The versions this worker has loaded, most recently used last."""

    def __init__(self, settings: Settings | None = None, capacity: int = 2) -> None:
        self._settings = settings  # None: read from the environment at the first load
        self.capacity = capacity
        self._held: OrderedDict[tuple[str, str], VersionEmbedder] = OrderedDict()
        self._lock = Lock()

    def get(self, name: str, version: str) -> VersionEmbedder:
        key = (name, version)
        with self._lock:
            if key in self._held:
                self._held.move_to_end(key)
                return self._held[key]
            settings = self._settings = self._settings or Settings()
            store = RegistryStore.from_settings(settings)
            info = store.get(name, version)
            device = resolve_device(settings.device)
            model = store.load(info, device)
            if not isinstance(model, ClipModel):
                raise InvalidInput(f"{info.ref} is a {info.family} model; a collection is embedded by CLIP")
            model.configure_runtime(resolve_precision(settings.embedding.precision, device))
            limits = settings.search
            batch = settings.embedding.max_batch_size  # what the service runs at most: the same arithmetic
            threads = None if device != "cpu" else settings.worker.torch_threads or cpu_threads(model)
            processes = settings.worker.prepare_processes
            if processes is None:  # with a GPU the input is the bottleneck: every CPU but two prepares
                processes = max(1, (os.cpu_count() or 1) - 2) if device != "cpu" else 0
            embedder = VersionEmbedder(
                model, version, limits.max_image_bytes, limits.max_image_pixels, batch, threads, processes
            )
            log.info(
                "loaded %s on %s for the bulk jobs (%s torch threads, %s)",
                info.ref,
                device,
                threads or "default",
                f"{embedder.processes} preparing processes" if embedder.processes else "a preparing thread",
            )
            self._held[key] = embedder
            while len(self._held) > self.capacity:
                self._held.popitem(last=False)[1].close()
            return embedder
