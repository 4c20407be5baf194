"""Torch work off the model thread, without slowing the model thread down.

libgomp (the OpenMP runtime of torch's CPU wheels) gives every thread that runs a parallel region a
team of worker threads, and keeps that team for as long as the thread lives. Once it manages more
threads than there are CPUs, it stops spinning between parallel regions and parks its workers in
the kernel at every barrier. Measured on 2 cores: after one image request had been preprocessed on
the event loop's thread, or once a poller thread had loaded a model, the model thread's forward left
the CPUs 17 % idle, and the embedding service ran texts at 0.48 x the raw forward instead of 0.74.

So in a model service only the model thread keeps a team:

- :func:`one_torch_thread` makes the calling thread run its torch ops alone (the event loop's
  thread, which decodes and preprocesses images at request time; preprocessing pools);
- :func:`in_fresh_thread` runs torch work that wants all cores (loading a model) on a thread that
  ends with it, and its team with it.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


@functools.cache
def _libgomp() -> ctypes.CDLL | None:
    """The libgomp torch loaded (Linux wheels), or None (another OpenMP runtime, another OS)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libgomp" in line and "/" in line}
    except OSError:
        return None
    return ctypes.CDLL(sorted(paths)[0]) if paths else None


def one_torch_thread() -> None:
    """Torch ops on the calling thread run on it alone, with no OpenMP team; other threads keep theirs.

    OpenMP's thread count is per thread: torch sets it on a thread's first use from the process-wide
    count (``torch.set_num_threads``), so that happens first, and then this thread's count is set to 1.
    A later ``torch.set_num_threads`` on this thread undoes it."""
    import torch  # here, not at the top: a service's supervisor imports this module and never runs torch

    torch.get_num_threads()  # torch's per-thread initialisation, which would otherwise override ours
    lib = _libgomp()
    if lib is not None:
        lib.omp_set_num_threads(1)


def in_fresh_thread(fn: Callable[[], T], name: str = "torch-once") -> T:
    """``fn()`` on a new thread that ends with it (taking its OpenMP team along); its result or error."""
    with ThreadPoolExecutor(1, thread_name_prefix=name) as once:  # leaving joins the thread
        return once.submit(fn).result()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Torch's intra-op thread count (process-wide) set to ``n`` within the block, and restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


__all__ = ["in_fresh_thread", "one_torch_thread", "torch_threads"]
