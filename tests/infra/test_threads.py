"""Only the model thread keeps an OpenMP team: helper threads run torch alone or end with their team."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from infra.threads import _libgomp, in_fresh_thread, one_torch_thread

pytestmark = pytest.mark.skipif(
    (os.cpu_count() or 1) < 2 or _libgomp() is None, reason="needs torch on libgomp and 2+ CPUs"
)


@pytest.fixture(autouse=True)
def two_threads() -> Iterator[None]:
    """The suite runs torch on one thread (``tests/conftest.py``); these tests are about OpenMP teams."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def os_threads() -> set[str]:
    """The ids of the process's threads now (a set: a thread of an earlier test may end meanwhile)."""
    return set(os.listdir("/proc/self/task"))


def big_op() -> float:
    """An elementwise op far over torch's grain size: it runs as an OpenMP parallel region."""
    return float((torch.ones(4_000_000) * 2).sum())


def on_thread(fn: Callable[[], Any]) -> Any:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


def left_over(before: set[str], timeout_s: float = 5.0) -> set[str]:
    """Threads started since ``before`` that are still alive once they have had ``timeout_s`` to end (team
    workers exit just after their thread)."""
    deadline = time.monotonic() + timeout_s
    while (os_threads() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    return os_threads() - before


def test_one_torch_thread_runs_alone_and_leaves_other_threads_their_count() -> None:
    def pinned() -> tuple[int, set[str], float]:
        one_torch_thread()
        before = os_threads()
        value = big_op()
        return torch.get_num_threads(), os_threads() - before, value

    count, started, value = on_thread(pinned)
    assert count == 1
    assert not started, "a pinned thread started OpenMP workers"
    assert value == pytest.approx(8_000_000)
    # another thread still gets the process-wide count, and a team for its parallel regions
    assert on_thread(torch.get_num_threads) == torch.get_num_threads() >= 2

    def unpinned() -> int:
        before = os_threads()
        big_op()
        return len(os_threads() - before)

    assert on_thread(unpinned) >= 1


def test_in_fresh_thread_returns_and_its_team_ends_with_it() -> None:
    def caller() -> tuple[float, set[str]]:  # a thread with no team of its own yet
        before = os_threads()
        value = in_fresh_thread(big_op)
        return value, left_over(before)

    value, still_alive = on_thread(caller)
    assert value == pytest.approx(8_000_000)
    assert not still_alive, "OpenMP workers outlived the fresh thread"


def test_in_fresh_thread_raises_the_error_on_the_caller() -> None:
    def fails() -> None:
        raise ValueError("bad checkpoint")

    with pytest.raises(ValueError, match="bad checkpoint"):
        in_fresh_thread(fails)
