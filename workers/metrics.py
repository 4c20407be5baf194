"""A worker's Prometheus metrics: job durations and failures, items processed, reindex progress.

Served on ``VLMOPS_WORKER__METRICS_PORT`` (``/metrics``; off when unset) from the moment the worker
is ready. A worker runs one job at a time in one process (``-P solo -c 1``), so the metrics live in
this process's default registry, which also carries the process's CPU, memory and GC figures, and
``prometheus_client``'s own HTTP server (a daemon thread) serves them; no multiprocess files.

Every ``vlmops.*`` task's duration series (success and failure) exist from the start at 0, so that
``increase()`` over a worker's first job counts it (a series that appears at 1 shows no increase).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task
from celery.signals import task_failure, task_postrun, task_prerun, worker_ready
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from infra.settings import Settings

log = logging.getLogger(__name__)

OUTCOMES = ("success", "failure")
JOB_SECONDS = Histogram(
    "vlmops_job_seconds",
    "time a job ran, by task and outcome (success, failure, retry)",
    ["task", "outcome"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800),
)
JOBS_FAILED = Counter(
    "vlmops_jobs_failed_total", "jobs that raised, by task and exception class", ["task", "exception"]
)
JOB_ITEMS = Counter(
    "vlmops_job_items_total",
    "items a job has processed (re-embedded, ingested), by task and collection",
    ["task", "collection"],
)
REINDEX_DONE = Gauge("vlmops_reindex_items_done", "items the collection's reindex has re-embedded", ["collection"])
REINDEX_EXPECTED = Gauge(
    "vlmops_reindex_items_expected", "items the collection held when its reindex started", ["collection"]
)
REINDEX_RUNNING = Gauge("vlmops_reindex_running", "1 while this worker reindexes the collection", ["collection"])


class JobItems:
    """Turns a pipeline's cumulative progress (items done so far) into the items counter and, once a
    reindex has said how many items it expects (:meth:`expect`), the collection's progress gauges."""

    def __init__(self, task: str, collection: str) -> None:
        self.items = JOB_ITEMS.labels(task=task, collection=collection)
        self.collection = collection
        self.expected: int | None = None
        self._done = 0

    def expect(self, total: int) -> None:
        self.expected = total
        REINDEX_EXPECTED.labels(collection=self.collection).set(total)
        REINDEX_DONE.labels(collection=self.collection).set(0)
        REINDEX_RUNNING.labels(collection=self.collection).set(1)

    def __call__(self, done: int) -> None:
        if done > self._done:
            self.items.inc(done - self._done)
            self._done = done
        if self.expected is not None:
            REINDEX_DONE.labels(collection=self.collection).set(done)

    def end(self) -> None:
        if self.expected is not None:
            REINDEX_RUNNING.labels(collection=self.collection).set(0)


@worker_ready.connect
def serve_metrics(sender: Any, **_: Any) -> None:
    port = Settings().worker.metrics_port
    if port is None:
        return
    for name in sender.app.tasks:
        if name.startswith("vlmops."):
            for outcome in OUTCOMES:
                JOB_SECONDS.labels(task=name, outcome=outcome)
    start_http_server(port)
    log.info("worker metrics on :%d/metrics", port)


@task_prerun.connect
def _job_started(task: Task, **_: Any) -> None:
    task.request.vlmops_started_at = time.monotonic()


@task_postrun.connect
def _job_ended(task: Task, state: str | None = None, **_: Any) -> None:
    started = getattr(task.request, "vlmops_started_at", None)
    if started is not None:
        outcome = (state or "unknown").lower()
        JOB_SECONDS.labels(task=task.name, outcome=outcome).observe(time.monotonic() - started)


@task_failure.connect
def _job_failed(sender: Task, exception: BaseException | None = None, **_: Any) -> None:
    JOBS_FAILED.labels(task=sender.name, exception=type(exception).__name__).inc()
