"""Continuous batching: the requests waiting when the model falls free run as one batch.

Every model service worker has one :class:`Batcher`: one model thread and one queue, shared by all of
the service's APIs. A request joins the queue with the operation it wants and the model version it
pins; when the model thread finishes a batch it takes the oldest waiting request and every other
waiting request for the same (operation, version), up to ``max_batch_size`` items, and runs them
together. So an idle service answers a lone request at once (no timer to wait out), and under load
batches grow by themselves to what arrived during the previous batch: the batch size adapts to the
load while the model never idles with work queued.

Why not BentoML's own batcher (``batchable=True``): its dispatcher waits, before each batch, for the
mean wait it observed over the last 50 batches. After a burst that mean is the queueing time of the
burst, so a lone request then waits it out too (measured: one text took 130 ms p50 after a burst
where it took 35 ms before), and the estimate decays by 5 % per refresh. It also polls every
millisecond and keeps the model idle while it waits. Shedding (a request queued past
``max_latency_ms`` gets a 503) is kept here, per request.

A batch of one (operation, version) fails alone: a request pinning a version that cannot be loaded
never fails the production batch beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from infra.errors import DeadlineExceeded, Overloaded

log = logging.getLogger(__name__)

RunBatch = Callable[[Hashable, Hashable, list[Any]], Sequence[Any]]


@dataclass
class _Request:
    op: Hashable
    key: Hashable
    items: list[Any]
    future: asyncio.Future[list[Any]]
    loop: asyncio.AbstractEventLoop
    deadline: float | None = None  # time.monotonic() after which the caller no longer wants the answer
    enqueued: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class BatchStats:
    """What one batch was: handed to ``on_batch`` (metrics)."""

    op: Hashable
    size: int
    requests: int
    queue_s: float
    run_s: float


def _resolve(future: asyncio.Future[list[Any]], result: list[Any] | BaseException) -> None:
    if future.done():  # the client went away
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


Result = list[Any] | BaseException


def _resolve_all(answers: list[tuple[asyncio.Future[list[Any]], Result]]) -> None:
    for future, result in answers:
        _resolve(future, result)


def _answer(answers: Sequence[tuple[_Request, Result]]) -> None:
    """Hand each result to its request's event loop (from the model thread): one wake-up of each loop,
    not one per request."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[list[Any]], Result]]] = {}
    for request, result in answers:
        by_loop.setdefault(request.loop, []).append((request.future, result))
    for loop, resolved in by_loop.items():
        with contextlib.suppress(RuntimeError):  # its loop has closed: nobody is waiting any more
            loop.call_soon_threadsafe(_resolve_all, resolved)


class Batcher:
    """``run(op, key, items)`` is called on the model thread with items of one (op, key), in order."""

    def __init__(
        self,
        run: RunBatch,
        max_batch_size: int,
        max_latency_ms: float,
        max_wait_ms: float = 200.0,
        name: str = "model",
        on_batch: Callable[[BatchStats], None] | None = None,
        on_run: Callable[[Hashable, bool], None] | None = None,
    ) -> None:
        """``on_batch(stats)`` after each batch; ``on_run(op, True)`` as the model starts one, ``(op, False)``
        when it is done (metrics; called on the model thread, errors logged)."""
        self._run = run
        self.max_batch_size = max_batch_size
        self._max_queue_s = max_latency_ms / 1000
        self._max_wait_s = max_wait_ms / 1000
        self._expect = 1  # requests in the service when the last batch ended: what the next may gather
        self._last_run_s = 0.0
        self._on_batch = on_batch
        self._on_run = on_run
        self._pending: deque[_Request] = deque()
        self._pending_items = 0
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ event-loop side
    async def submit(self, op: Hashable, key: Hashable, items: list[Any], deadline: float | None = None) -> list[Any]:
        """Queue ``items`` of one request; their results, in order, once their batch has run. ``deadline``
        (``time.monotonic()``): a request still queued then never reaches the model and fails with
        :class:`DeadlineExceeded` (a gRPC client's deadline)."""
        loop = asyncio.get_running_loop()
        request = _Request(op, key, items, loop.create_future(), loop, deadline)
        with self._cond:
            if self._stopped:
                raise Overloaded("the service is shutting down")
            self._pending.append(request)
            self._pending_items += len(items)
            # wake the model thread only when it has something new to decide: a request for an idle
            # model, or a batch now filled (a wake-up per request costs the loop a GIL hand-over each)
            if (
                len(self._pending) == 1
                or len(self._pending) >= self._expect
                or self._pending_items >= self.max_batch_size
            ):
                self._cond.notify()
        return await request.future

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    # ------------------------------------------------------------------ model-thread side
    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    self._fail_all(Overloaded("the service is shutting down"))
                    return
            self._fill_wait()
            with self._cond:
                batch = self._take()
            if batch:
                self._run_batch(batch)

    def _fill_wait(self) -> None:
        """Let the next batch fill up to the number of requests that were in the service when the last
        batch ended (those it answered, which their clients may send again, plus those queued then),
        for at most ``max_wait_ms`` and never longer than the last batch ran. At idle that number is 1
        and nothing waits; under a steady load the batches grow to the load."""
        with self._cond:
            if not self._pending or self._expect <= 1:
                return
            wait_s = min(self._max_wait_s, self._last_run_s)
            deadline = self._pending[0].enqueued + wait_s
            while not self._stopped and self._pending and self._fillable():
                now = time.monotonic()
                if now >= deadline:
                    self._expect = max(1, len(self._pending))  # the load fell: expect what came
                    return
                self._cond.wait(deadline - now)

    def _fillable(self) -> bool:
        """The head's batch could take more items, and fewer requests wait than are expected."""
        head = self._pending[0]
        same = sum(len(r.items) for r in self._pending if (r.op, r.key) == (head.op, head.key))
        return same < self.max_batch_size and len(self._pending) < self._expect

    def _take(self) -> list[_Request]:
        """The oldest live request and the waiting ones of its (op, key), up to ``max_batch_size`` items.

        Requests whose client went away are dropped; those past their deadline fail without running; those
        queued past ``max_latency_ms`` are shed."""
        now = time.monotonic()
        batch: list[_Request] = []
        rest: deque[_Request] = deque()
        size = 0
        for request in self._pending:
            if request.future.done():
                continue
            waited = now - request.enqueued
            if request.deadline is not None and now >= request.deadline:
                late = DeadlineExceeded(
                    f"the deadline passed after {waited * 1000:.0f} ms in the queue, before the model"
                )
                _answer([(request, late)])
                continue
            if waited > self._max_queue_s:
                shed = Overloaded(
                    f"the request waited {waited * 1000:.0f} ms in the queue, over the limit of "
                    f"{self._max_queue_s * 1000:.0f} ms: the service is overloaded, retry later"
                )
                _answer([(request, shed)])
                continue
            head = batch[0] if batch else request
            fits = not batch or size + len(request.items) <= self.max_batch_size
            if (request.op, request.key) == (head.op, head.key) and fits:
                batch.append(request)
                size += len(request.items)
            else:
                rest.append(request)
        self._pending = rest
        self._pending_items = sum(len(r.items) for r in rest)
        return batch

    def _run_batch(self, batch: list[_Request]) -> None:
        head = batch[0]
        items = [item for request in batch for item in request.items]
        self._notify(head.op, True)
        started = time.monotonic()
        results: list[Any] | BaseException
        try:
            results = []
            for i in range(0, len(items), self.max_batch_size):  # one request may hold more items
                chunk = items[i : i + self.max_batch_size]
                out = list(self._run(head.op, head.key, chunk))
                if len(out) != len(chunk):
                    raise RuntimeError(f"{head.op!r} returned {len(out)} results for {len(chunk)} items")
                results.extend(out)
        except Exception as exc:  # the batch's requests get the error; the thread serves on
            results = exc
        ran = time.monotonic() - started
        self._notify(head.op, False)
        with self._cond:
            self._expect = len(batch) + len(self._pending)
            self._last_run_s = ran
        answers: list[tuple[_Request, Result]] = []
        start = 0
        for request in batch:
            end = start + len(request.items)
            answers.append((request, results if isinstance(results, BaseException) else results[start:end]))
            start = end
        _answer(answers)
        if self._on_batch is not None:
            stats = BatchStats(head.op, len(items), len(batch), started - head.enqueued, ran)
            try:
                self._on_batch(stats)
            except Exception:  # metrics must never stop the model thread
                log.exception("on_batch failed")

    def _notify(self, op: Hashable, running: bool) -> None:
        if self._on_run is not None:
            try:
                self._on_run(op, running)
            except Exception:  # metrics must never stop the model thread
                log.exception("on_run failed")

    def _fail_all(self, exc: BaseException) -> None:
        _answer([(request, exc) for request in self._pending])
        self._pending.clear()
        self._pending_items = 0


__all__ = ["BatchStats", "Batcher"]
