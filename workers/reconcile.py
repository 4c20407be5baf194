"""The reconciler: every collection follows its model's ``production`` alias, whoever moved it (the
vlmops CLI, the MLflow UI, ``MlflowClient``).

Each pass compares every collection's live version with its model's production version and
enqueues one reindex where they differ; rollbacks are the same case. It never enqueues a second
while one is queued or running for that collection: the claim is a row of the catalog database,
written under the collection's exclusive lock, so several workers reconciling at once enqueue one
job. A reindex that failed is retried with exponential backoff; the failure stays on the job's row
(``vlmops collections``, the search service's ``/metrics``) until one succeeds.

Each worker that consumes the default queue runs a pass every ``VLMOPS_WORKER__RECONCILE_INTERVAL_S``
on a thread of its own; ``vlmops models promote`` sends a ``vlmops.reconcile`` task, which only
makes one happen sooner.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from celery import Celery, states

from infra.catalog_db import ACTIVE, CatalogDB, CollectionRow, JobRow
from infra.errors import NotFound
from infra.periodic import Periodic
from infra.settings import Settings, WorkerSettings

log = logging.getLogger(__name__)

REINDEX_TASK = "vlmops.reindex"
ProductionOf = Callable[[str], str | None]  # model name -> its production version (None: it has none)
Send = Callable[[str, str, str], None]  # (collection, version, task id): enqueue the reindex
TaskState = Callable[[str], str]  # task id -> Celery state


@dataclass(frozen=True)
class Enqueued:
    collection: str
    version: str
    task_id: str
    previous: str


def failures_so_far(job: JobRow | None, version: str) -> int:
    """Consecutive failures carried into a new attempt: those of the same target version only."""
    return job.failures if job is not None and job.version == version else 0


def backoff_s(failures: int, settings: WorkerSettings) -> float:
    """Seconds before attempt ``failures + 1``: the base, doubled per consecutive failure, capped."""
    return float(min(settings.retry_backoff_max_s, settings.retry_backoff_s * 2 ** max(0, failures - 1)))


class Reconciler:
    def __init__(
        self, db: CatalogDB, production_of: ProductionOf, send: Send, task_state: TaskState, settings: WorkerSettings
    ) -> None:
        self.db = db
        self.production_of = production_of
        self.send = send
        self.task_state = task_state
        self.settings = settings

    def active(self, job: JobRow | None, now: float) -> bool:
        """A reindex is queued or running: its row says so, and Celery has not seen its task end (a task
        whose row has not moved for two visibility timeouts is taken as lost)."""
        if job is None or job.state not in ACTIVE or job.task_id is None:
            return False
        if self.task_state(job.task_id) in states.READY_STATES:
            return False
        return now - job.updated_at < 2 * self.settings.visibility_timeout_s

    def due(self, row: CollectionRow, target: str, job: JobRow | None, now: float) -> bool:
        if row.live_version == target or self.active(job, now):
            return False
        if job is not None and job.state == "failed" and job.version == target:
            return (job.next_attempt_at or 0.0) <= now
        return True

    def run_once(self, now: float | None = None) -> list[Enqueued]:
        """One pass; returns the reindexes it enqueued."""
        enqueued = []
        productions: dict[str, str | None] = {}
        for row in self.db.all():
            if row.model not in productions:
                productions[row.model] = self.production_of(row.model)
            target = productions[row.model]
            if target is None:
                continue
            if self.due(row, target, self.db.job(row.name), now or time.time()) and (
                done := self._claim(row.name, target, now)
            ):
                enqueued.append(done)
        return enqueued

    def _claim(self, name: str, target: str, now: float | None) -> Enqueued | None:
        try:
            with self.db.locked(name, exclusive=True) as (conn, row):
                at = now or time.time()
                job = self.db.job(name, conn)
                if not self.due(row, target, job, at):  # another worker claimed it first
                    return None
                failures = failures_so_far(job, target)
                task_id = str(uuid.uuid4())
                self.db.put_job(conn, JobRow(name, target, "queued", task_id, failures, None, None, at))
                # sent before the claim commits: a claim whose task was never sent cannot exist; a task
                # sent for a claim that then failed to commit records itself when it starts
                self.send(name, target, task_id)
        except NotFound:  # deleted meanwhile
            return None
        log.info(
            "collection %r is on version %s, production is %s: reindex %s enqueued",
            name,
            row.live_version,
            target,
            task_id,
        )
        return Enqueued(name, target, task_id, row.live_version)


def record_start(db: CatalogDB, collection: str, version: str, task_id: str) -> None:
    """The reindex task began (or was redelivered): its row says running, whoever enqueued it."""
    try:
        with db.locked(collection, exclusive=True) as (conn, _):
            job = db.job(collection, conn)
            failures = failures_so_far(job, version)
            db.put_job(conn, JobRow(collection, version, "running", task_id, failures, None, None, time.time()))
    except NotFound:
        return


def record_end(
    db: CatalogDB, collection: str, error: str | None, settings: WorkerSettings, now: float | None = None
) -> JobRow | None:
    """Success clears the failures; a failure counts one more and sets when to try again."""
    if error is None:
        return db.set_job(collection, state="succeeded", failures=0, error=None, next_attempt_at=None)
    job = db.job(collection)
    failures = (job.failures if job is not None else 0) + 1
    retry_at = (now or time.time()) + backoff_s(failures, settings)
    return db.set_job(collection, state="failed", failures=failures, error=error[:4000], next_attempt_at=retry_at)


def reconciler_thread(make: Callable[[], Reconciler], interval_s: float) -> Periodic:
    """A pass every ``interval_s`` of the reconciler ``make()`` builds on the first pass that succeeds
    (the catalog or registry may still be starting when the worker does)."""
    built = functools.cache(make)
    return Periodic("reconciler", interval_s, lambda: built().run_once())


def reconciler(settings: Settings, app: Celery) -> Reconciler:
    """The reconciler of this worker: the catalog and registry of ``settings``, jobs sent through ``app``."""
    from registry.store import PRODUCTION, RegistryStore

    store = RegistryStore.from_settings(settings)

    def production_of(model: str) -> str | None:
        try:
            return store.by_alias(model, PRODUCTION).version
        except NotFound:
            return None

    def send(collection: str, version: str, task_id: str) -> None:
        # replace: a build of another version left by a job that no longer runs is abandoned
        app.send_task(REINDEX_TASK, args=[collection, version], kwargs={"replace": True}, task_id=task_id)

    def task_state(task_id: str) -> str:
        return str(app.AsyncResult(task_id).state)

    return Reconciler(CatalogDB(settings.catalog_uri), production_of, send, task_state, settings.worker)
