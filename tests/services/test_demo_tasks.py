"""``vlmops demo`` starts each task's service as soon as its model is trained, while the others still train (a
real background process stands for the training), and stops when the training fails."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

from infra.settings import Settings
from registry.store import VersionInfo
from services import demo_tasks


def _fake_models(
    monkeypatch: pytest.MonkeyPatch, ready_at: dict[str, float], training: subprocess.Popen[bytes] | None = None
) -> list[str]:
    """Each task's model counts as trained from its time in ``ready_at``, or once ``training`` ended; returns the
    tasks made production."""
    made: list[str] = []
    monkeypatch.setattr(demo_tasks, "is_cached", lambda settings, task, seed=0: time.monotonic() >= ready_at[task])

    def production(settings: Settings, task: str, seed: int = 0) -> VersionInfo:
        assert time.monotonic() >= ready_at[task] or (training is not None and training.poll() is not None), task
        made.append(task)
        return VersionInfo(f"vlmops-{task}", "1", "src", tags={"family": "toy"})

    monkeypatch.setattr(demo_tasks, "_production", production)
    return made


def _training(seconds: float, code: int = 0) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", f"import time, sys; time.sleep({seconds}); sys.exit({code})"])


def test_each_service_starts_when_its_model_is_trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.monotonic()
    ready_at = {"grounding": now + 0.3, "captioning": now + 1.2, "vqa": now + 60}  # vqa: when the training ends
    training = _training(2.5)
    made = _fake_models(monkeypatch, ready_at, training)
    started: list[tuple[list[str], float]] = []
    versions = demo_tasks.serve_as_ready(
        Settings(home=tmp_path), 0, training, lambda tasks: started.append((tasks, time.monotonic())), poll_s=0.05
    )
    assert [tasks for tasks, _ in started] == [["grounding"], ["captioning"], ["vqa"]]
    assert started[0][1] < started[1][1] < started[2][1]
    assert training.returncode == 0 and started[2][1] - now >= 2.5  # the last, once the training ended
    assert started[1][1] - now < 2.5  # the captioner's before that
    assert made == ["grounding", "captioning", "vqa"] and set(versions) == {"grounding", "captioning", "vqa"}


def test_nothing_training_starts_every_service_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = _fake_models(monkeypatch, {"grounding": 0.0, "captioning": 0.0, "vqa": 0.0})
    started: list[list[str]] = []
    demo_tasks.serve_as_ready(Settings(home=tmp_path), 0, None, started.append)
    assert started == [list(demo_tasks.TASKS)] and sorted(made) == sorted(demo_tasks.TASKS)


def test_a_failed_training_stops_the_demo_with_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.monotonic()
    training = _training(0.5, code=3)
    made = _fake_models(monkeypatch, {"grounding": now, "captioning": now + 60, "vqa": now + 60}, training)
    started: list[list[str]] = []
    with pytest.raises(click.ClickException, match="demo-training.log"):
        demo_tasks.serve_as_ready(Settings(home=tmp_path), 0, training, started.append, poll_s=0.05)
    assert started == [["grounding"]] and made == ["grounding"]  # the grounder was served; nothing else
