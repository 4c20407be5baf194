"""The workers' liveness file: fresh while a real worker consumes, fresh through a long job, gone
when the worker stops."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.workers.helpers import ensure_redis, start_worker, stop_worker
from workers.heartbeat import Heartbeat


def test_heartbeat_keeps_beating_through_a_long_job(tmp_path: Path) -> None:
    beat = Heartbeat(tmp_path / "hb", interval_s=0.05)
    beat.job_started()
    first = (tmp_path / "hb").stat().st_mtime_ns
    time.sleep(0.3)  # no consumer timer runs: only the job-side thread touches the file
    assert (tmp_path / "hb").stat().st_mtime_ns > first
    beat.job_finished()
    time.sleep(0.15)
    settled = (tmp_path / "hb").stat().st_mtime_ns
    time.sleep(0.2)
    assert (tmp_path / "hb").stat().st_mtime_ns == settled  # idle: the consumer's timer beats, not the thread
    beat.stop()
    assert not (tmp_path / "hb").exists()


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


@pytest.mark.slow
def test_a_real_worker_beats_while_it_consumes_and_stops_when_it_stops(tmp_path: Path) -> None:
    ensure_redis()
    hb = tmp_path / "heartbeat"
    env = {
        "VLMOPS_HOME": str(tmp_path / "home"),
        "VLMOPS_BROKER_URL": "redis://127.0.0.1:6379/14",
        "VLMOPS_WORKER__HEARTBEAT_FILE": str(hb),
        "VLMOPS_WORKER__HEARTBEAT_INTERVAL_S": "0.5",
        "VLMOPS_WORKER__RECONCILE": "false",
    }
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + 60
        while _mtime(hb) is None and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.2)
        first = _mtime(hb)
        assert first is not None, (tmp_path / "worker.log").read_text()[-3000:]
        time.sleep(2.0)
        assert (_mtime(hb) or 0) > first, "the idle worker's consumer did not touch the file again"
    finally:
        stop_worker(worker)
    assert worker.returncode is not None
    assert not hb.exists(), "a stopped worker left a fresh heartbeat behind"
