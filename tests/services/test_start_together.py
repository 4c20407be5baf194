"""Services started side by side (``ServiceProcess.start_together``, ``infra.process.running``): the fixtures
and the demo start the services they need this way rather than one after another."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from infra.process import ServiceProcess, running


def test_services_start_side_by_side_and_stop_together(tmp_path: Path) -> None:
    env = {"VLMOPS_HOME": str(tmp_path)}
    first = ServiceProcess("search", env=env, log_path=tmp_path / "first.log")
    second = ServiceProcess("search", env=env, log_path=tmp_path / "second.log")
    with running(first, second) as (a, b):
        assert a.port != b.port
        for svc in (a, b):
            assert httpx.get(f"{svc.url}/readyz", timeout=10).status_code == 200
            assert svc.proc is not None and svc.proc.poll() is None
    assert first.proc is not None and first.proc.poll() is not None
    assert second.proc is not None and second.proc.poll() is not None


def test_one_that_fails_to_start_stops_the_others(tmp_path: Path) -> None:
    env = {"VLMOPS_HOME": str(tmp_path), "VLMOPS_AUTH__KEYS": ""}
    good = ServiceProcess("search", env=env, log_path=tmp_path / "good.log")
    refused = ServiceProcess("search", env=env, log_path=tmp_path / "refused.log", host="0.0.0.0")  # no keys
    with pytest.raises(RuntimeError, match="exited"):
        ServiceProcess.start_together([good, refused])
    assert good.proc is not None and good.proc.poll() is not None  # stopped, not left behind
    assert "refusing to start" in (tmp_path / "refused.log").read_text()
