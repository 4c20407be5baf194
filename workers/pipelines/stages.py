"""Glue of the job pipelines: a stage that runs on a thread of its own, a bounded number of items ahead."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty, Full, Queue
from typing import TypeVar

T = TypeVar("T")
_POLL_S = 0.1


class _End:
    pass


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def ahead(items: Iterator[T], depth: int, name: str = "stage") -> Iterator[T]:
    """``items``, produced on a thread of their own while the consumer works, at most ``depth`` ahead.

    The producer's exception is raised in the consumer; a consumer that stops early (an exception of its
    own, or ``close``) stops the producer at its next item, so no thread is left blocked."""
    queue: Queue[T | _End | _Failed] = Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(value: T | _End | _Failed) -> bool:
        while not stop.is_set():
            try:
                queue.put(value, timeout=_POLL_S)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_End())
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            put(_Failed(exc))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            try:
                got = queue.get(timeout=_POLL_S)
            except Empty:
                if not thread.is_alive() and queue.empty():
                    return
                continue
            if isinstance(got, _End):
                return
            if isinstance(got, _Failed):
                raise got.exc
            yield got
    finally:
        stop.set()
        thread.join(timeout=5)


class StageClock:
    """Seconds the runner spends in each stage (embedding, waiting for the reader or the writer): where a
    job's time goes, logged when it ends."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - t0

    def summary(self) -> str:
        return ", ".join(f"{stage} {s:.2f} s" for stage, s in self.seconds.items())
