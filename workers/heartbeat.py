"""The worker's liveness signal for Kubernetes probes: a file (``VLMOPS_WORKER__HEARTBEAT_FILE``)
whose age says whether this worker can take jobs.

- While idle, the consumer touches it from its own timer every ``heartbeat_interval_s``: it exists
  once the worker consumes from the broker, and goes stale when the consumer stops (the broker lost
  for good, a wedged loop), so the probe restarts the pod.
- While a job runs (one at a time, ``-P solo``), the consumer loop is busy with it; a thread touches
  the file until the job ends, so a long finetune is not killed for being long. A job that hangs is the
  job time limit's business, not the probe's.
- On shutdown the file is removed.

Why not ``celery inspect ping``: a solo worker answers remote control only between jobs, so the probe
would kill every job longer than its timeout, and each probe would start a Python process.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from celery import bootsteps
from celery.signals import task_postrun, task_prerun

from infra.settings import Settings

log = logging.getLogger("vlmops.heartbeat")


class Heartbeat:
    def __init__(self, path: Path, interval_s: float) -> None:
        self.path = path
        self.interval_s = interval_s
        self._busy = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
        except OSError as exc:  # a full or read-only disk: the probe will say so
            log.warning("cannot touch the heartbeat file %s: %s", self.path, exc)

    def job_started(self) -> None:
        self._busy.set()
        self.beat()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._beat_while_busy, name="vlmops-heartbeat", daemon=True)
            self._thread.start()

    def job_finished(self) -> None:
        self._busy.clear()
        self.beat()

    def _beat_while_busy(self) -> None:
        while self._busy.is_set():
            self.beat()
            time.sleep(self.interval_s)

    def stop(self) -> None:
        self._busy.clear()
        self.path.unlink(missing_ok=True)


_HEARTBEAT: Heartbeat | None = None


class HeartbeatStep(bootsteps.StartStopStep):
    """A consumer bootstep: it starts once the worker consumes (after the task step)."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer_ref: Any = None

    def start(self, parent: Any) -> None:
        global _HEARTBEAT
        settings = Settings().worker
        if settings.heartbeat_file is None:
            return
        _HEARTBEAT = Heartbeat(settings.heartbeat_file, settings.heartbeat_interval_s)
        _HEARTBEAT.beat()
        self.timer_ref = parent.timer.call_repeatedly(settings.heartbeat_interval_s, _HEARTBEAT.beat)
        log.info("heartbeat: %s every %.0f s", settings.heartbeat_file, settings.heartbeat_interval_s)

    def stop(self, parent: Any) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None
        if _HEARTBEAT is not None:
            _HEARTBEAT.stop()

    shutdown = stop


@task_prerun.connect
def _job_started(**_: Any) -> None:
    if _HEARTBEAT is not None:
        _HEARTBEAT.job_started()


@task_postrun.connect
def _job_finished(**_: Any) -> None:
    if _HEARTBEAT is not None:
        _HEARTBEAT.job_finished()
