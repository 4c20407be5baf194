"""The continuous batcher on its own: what runs together, in what order, and what fails alone."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Hashable
from typing import Any

import pytest

from infra.errors import NotFound, Overloaded
from services.batcher import Batcher, BatchStats


class Model:
    """Records every batch; ``gate`` holds the model thread inside a batch until the test opens it."""

    def __init__(self) -> None:
        self.batches: list[tuple[Hashable, Hashable, list[Any]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.delay_s = 0.0

    def run(self, op: Hashable, key: Hashable, items: list[Any]) -> list[Any]:
        self.entered.set()
        assert self.gate.wait(30)
        time.sleep(self.delay_s)
        self.batches.append((op, key, list(items)))
        if key == "missing":
            raise NotFound("version 'missing' is not registered")
        return [f"{op}:{key}:{item}" for item in items]


async def _hold_model(batcher: Batcher, model: Model) -> asyncio.Task[list[Any]]:
    """Occupy the model thread with one request so that the next ones queue behind it."""
    model.gate.clear()
    first = asyncio.create_task(batcher.submit("embed", None, ["first"]))
    assert await asyncio.to_thread(model.entered.wait, 30)
    return first


def test_requests_queued_while_the_model_is_busy_run_as_one_batch_in_order() -> None:
    model, stats = Model(), []
    batcher = Batcher(model.run, max_batch_size=64, max_latency_ms=30_000, on_batch=stats.append)

    async def scenario() -> list[list[Any]]:
        first = await _hold_model(batcher, model)
        rest = [asyncio.create_task(batcher.submit("embed", None, [f"r{i}a", f"r{i}b"])) for i in range(10)]
        await asyncio.sleep(0.05)
        model.gate.set()
        return [await first, *[await t for t in rest]]

    results = asyncio.run(scenario())
    assert results[0] == ["embed:None:first"]
    assert results[1:] == [[f"embed:None:r{i}a", f"embed:None:r{i}b"] for i in range(10)]
    assert [len(items) for _, _, items in model.batches] == [1, 20]
    assert model.batches[1][2] == [f"r{i}{s}" for i in range(10) for s in "ab"]
    assert [(s.size, s.requests) for s in stats] == [(1, 1), (20, 10)]
    assert all(isinstance(s, BatchStats) and s.run_s >= 0 for s in stats)
    batcher.stop()


def test_batches_never_mix_operations_or_versions_and_keep_arrival_order() -> None:
    model = Model()
    batcher = Batcher(model.run, max_batch_size=64, max_latency_ms=30_000)

    async def scenario() -> None:
        first = await _hold_model(batcher, model)
        keys = [("embed", "2"), ("embed", None), ("classify", None), ("embed", "2"), ("embed", None)]
        tasks = [asyncio.create_task(batcher.submit(op, key, [i])) for i, (op, key) in enumerate(keys)]
        await asyncio.sleep(0.05)
        model.gate.set()
        out = [await t for t in tasks]
        assert out == [[f"{op}:{key}:{i}"] for i, (op, key) in enumerate(keys)]
        await first

    asyncio.run(scenario())
    # after the first: the oldest waiting request's (op, version) goes first, with its peers
    assert [(op, key, items) for op, key, items in model.batches[1:]] == [
        ("embed", "2", [0, 3]),
        ("embed", None, [1, 4]),
        ("classify", None, [2]),
    ]
    batcher.stop()


def test_a_request_over_the_batch_size_runs_in_chunks_no_larger_than_it() -> None:
    model = Model()
    batcher = Batcher(model.run, max_batch_size=4, max_latency_ms=30_000)
    out = asyncio.run(batcher.submit("embed", None, list(range(10))))
    assert out == [f"embed:None:{i}" for i in range(10)]
    assert [len(items) for _, _, items in model.batches] == [4, 4, 2]
    batcher.stop()


def test_a_failing_version_fails_only_its_own_requests() -> None:
    model = Model()
    batcher = Batcher(model.run, max_batch_size=64, max_latency_ms=30_000)

    async def scenario() -> list[Any]:
        first = await _hold_model(batcher, model)
        bad = asyncio.create_task(batcher.submit("embed", "missing", ["x"]))
        good = asyncio.create_task(batcher.submit("embed", None, ["y"]))
        await asyncio.sleep(0.05)
        model.gate.set()
        await first
        return list(await asyncio.gather(bad, good, return_exceptions=True))

    bad, good = asyncio.run(scenario())
    assert isinstance(bad, NotFound) and "missing" in str(bad)
    assert good == ["embed:None:y"]
    # and the model thread serves on
    assert asyncio.run(batcher.submit("embed", None, ["z"])) == ["embed:None:z"]
    batcher.stop()


def test_requests_queued_past_the_latency_limit_are_shed_with_503() -> None:
    model = Model()
    batcher = Batcher(model.run, max_batch_size=64, max_latency_ms=50)

    async def scenario() -> list[Any]:
        first = await _hold_model(batcher, model)
        late = asyncio.create_task(batcher.submit("embed", None, ["late"]))
        await asyncio.sleep(0.3)  # the model stays busy past the 50 ms limit
        model.gate.set()
        await first
        return list(await asyncio.gather(late, return_exceptions=True))

    (late,) = asyncio.run(scenario())
    assert isinstance(late, Overloaded) and late.http_status == 503
    assert "over the limit of 50 ms" in str(late)
    assert all(items != ["late"] for _, _, items in model.batches)  # it never reached the model
    batcher.stop()


def test_a_lone_request_at_idle_does_not_wait_for_a_batch_to_fill() -> None:
    """Even with a long ``max_wait_ms`` a lone request runs at once: at idle nothing else is expected."""
    model = Model()
    batcher = Batcher(model.run, max_batch_size=64, max_latency_ms=60_000, max_wait_ms=20_000)

    async def scenario() -> None:
        for i in range(3):
            assert await asyncio.wait_for(batcher.submit("embed", None, [i]), timeout=10) == [f"embed:None:{i}"]

    asyncio.run(scenario())
    assert [items for _, _, items in model.batches] == [[0], [1], [2]]
    batcher.stop()


def test_after_a_burst_the_next_batch_waits_to_fill_to_the_load_it_saw() -> None:
    """A batch that ended with 8 requests in the service makes the next gather up to 8 (not run 1 + 7)."""
    model = Model()
    model.delay_s = 1.0  # a batch takes 1 s: the most the next one may wait (margin for a busy CI machine)
    batcher = Batcher(model.run, max_batch_size=64, max_latency_ms=60_000, max_wait_ms=20_000)

    async def scenario() -> None:
        first = await _hold_model(batcher, model)
        burst = [asyncio.create_task(batcher.submit("embed", None, [i])) for i in range(7)]
        await asyncio.sleep(0.05)
        model.gate.set()
        await first
        await asyncio.gather(*burst)  # ran as one batch of 7; 7 answered + 0 queued at its end
        model.batches.clear()
        again = []
        for i in range(7):  # the clients come back one by one, 10 ms apart
            again.append(asyncio.create_task(batcher.submit("embed", None, [i])))
            await asyncio.sleep(0.01)
        await asyncio.gather(*again)

    asyncio.run(scenario())
    assert [len(items) for _, _, items in model.batches] == [7]
    batcher.stop()


def test_a_stopped_batcher_refuses_new_work() -> None:
    batcher = Batcher(Model().run, max_batch_size=4, max_latency_ms=1000)
    batcher.stop()
    with pytest.raises(Overloaded, match="shutting down"):
        asyncio.run(batcher.submit("embed", None, [1]))
