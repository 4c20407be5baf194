"""The reconciler's rules on a real catalog database (SQLite and PostgreSQL), with the broker and the
registry as its boundaries: one reindex per collection that is off production, never a second while
one is queued or running, retries with backoff after failures, rollbacks alike, and several workers
reconciling at once still enqueue one job."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.catalog_db import CatalogDB, CollectionRow
from infra.settings import WorkerSettings
from tests.conftest import postgres_database
from workers.reconcile import Reconciler, backoff_s, record_end, record_start


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CatalogDB]:
    if request.param == "sqlite":
        yield CatalogDB(f"sqlite:///{tmp_path / 'catalog.db'}")
        return
    for url in postgres_database():
        catalog = CatalogDB(url)
        yield catalog
        catalog.close()


class Broker:
    """The boundary: what was sent, and each task's Celery state."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []
        self.states: dict[str, str] = {}
        self.lock = threading.Lock()

    def send(self, collection: str, version: str, task_id: str) -> None:
        with self.lock:
            self.sent.append((collection, version, task_id))
            self.states[task_id] = "PENDING"

    def state(self, task_id: str) -> str:
        return self.states.get(task_id, "PENDING")


def add(db: CatalogDB, name: str, model: str, version: str) -> None:
    with db.transaction() as conn:
        db.insert(conn, CollectionRow(name, model, 8, [], f"{name}__{model}-v{version}", version, created_at=0.0))


def live(db: CatalogDB, name: str, version: str) -> None:
    with db.transaction() as conn:
        db.update(conn, name, live_version=version, live_physical=f"{name}-v{version}")


SETTINGS = WorkerSettings(retry_backoff_s=10, retry_backoff_max_s=60)


def test_one_reindex_per_collection_off_production_and_never_a_second(db: CatalogDB) -> None:
    add(db, "a", "clip", "1")
    add(db, "b", "clip", "2")
    add(db, "c", "other", "1")
    production = {"clip": "2", "other": None}
    broker = Broker()
    rec = Reconciler(db, production.get, broker.send, broker.state, SETTINGS)
    first = rec.run_once()
    assert [(e.collection, e.version, e.previous) for e in first] == [("a", "2", "1")]
    assert rec.run_once() == [] and len(broker.sent) == 1  # queued: not again
    task_id = broker.sent[0][2]
    record_start(db, "a", "2", task_id)
    broker.states[task_id] = "PROGRESS"
    assert rec.run_once() == []  # running: not again
    live(db, "a", "2")
    record_end(db, "a", None, SETTINGS)
    broker.states[task_id] = "SUCCESS"
    assert rec.run_once() == [] and db.job("a").state == "succeeded"  # in sync
    production["clip"] = "1"  # a rollback, whoever made it
    (back,) = [e for e in rec.run_once() if e.collection == "a"]
    assert back.version == "1" and {e.collection for e in rec.run_once()} == set()
    assert {c for c, _, _ in broker.sent} == {"a", "b"}  # b follows the rollback too


def test_a_failing_reindex_is_retried_with_backoff_and_shows(db: CatalogDB) -> None:
    add(db, "a", "clip", "1")
    broker = Broker()
    rec = Reconciler(db, {"clip": "2"}.get, broker.send, broker.state, SETTINGS)
    now = time.time()
    for attempt, wait in enumerate([10, 20, 40, 60, 60], start=1):
        (job,) = rec.run_once(now=now)
        record_start(db, "a", "2", job.task_id)
        failed = record_end(db, "a", "NotReady: embedding service unreachable", SETTINGS, now=now)
        broker.states[job.task_id] = "FAILURE"
        assert failed is not None and failed.failures == attempt and failed.state == "failed"
        assert failed.error == "NotReady: embedding service unreachable"
        assert failed.next_attempt_at == pytest.approx(now + wait)
        assert backoff_s(attempt, SETTINGS) == wait
        assert rec.run_once(now=now + wait - 3) == []  # not before its time
        now = failed.next_attempt_at + 0.1
    (job,) = rec.run_once(now=now)
    record_start(db, "a", "2", job.task_id)
    assert record_end(db, "a", None, SETTINGS).failures == 0  # a success clears the count


def test_a_job_lost_by_the_broker_is_enqueued_again(db: CatalogDB) -> None:
    add(db, "a", "clip", "1")
    broker = Broker()
    rec = Reconciler(db, {"clip": "2"}.get, broker.send, broker.state, SETTINGS)
    (job,) = rec.run_once()
    broker.states[job.task_id] = "REVOKED"  # ended without running to the end
    (again,) = rec.run_once()
    assert again.task_id != job.task_id
    stale = time.time() + 2 * SETTINGS.visibility_timeout_s + 1  # a queued row nobody moved for too long
    assert [e.collection for e in rec.run_once(now=stale)] == ["a"]


def test_workers_reconciling_at_once_enqueue_one_job(db: CatalogDB) -> None:
    for n in range(5):
        add(db, f"c{n}", "clip", "1")
    broker = Broker()
    recs = [Reconciler(db, {"clip": "2"}.get, broker.send, broker.state, SETTINGS) for _ in range(4)]
    threads = [threading.Thread(target=r.run_once) for r in recs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(c for c, _, _ in broker.sent) == [f"c{n}" for n in range(5)]
