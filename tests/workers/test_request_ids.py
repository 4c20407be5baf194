"""A job runs with the request id of what enqueued it: its log lines carry it and the services it calls
receive it; a job enqueued with none runs with its task id. The worker, started as a deployment starts
it (``vlmops worker``), writes JSON lines in JSON mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from infra.logs import request_context
from tests.conftest import make_settings
from tests.servers import recording_server
from tests.workers.helpers import ensure_redis, start_worker, stop_worker
from workers.app import make_app

pytestmark = pytest.mark.slow
BROKER = "redis://127.0.0.1:6379/13"


def test_a_job_logs_and_passes_on_the_id_it_was_enqueued_with(tmp_path: Path) -> None:
    ensure_redis()
    redis.Redis.from_url(BROKER).flushdb()
    log = tmp_path / "worker.log"
    with recording_server([]) as search:  # a search service with no collections: the reindex fails, NotFound
        env = {
            "VLMOPS_HOME": str(tmp_path),
            "VLMOPS_BROKER_URL": BROKER,
            "VLMOPS_LOG_FORMAT": "json",
            "VLMOPS_WORKER__SEARCH_URL": search.url,
            "VLMOPS_WORKER__RECONCILE": "false",
        }
        worker = start_worker(env, log, queues="celery", vlmops=True)
        try:
            app = make_app(make_settings(tmp_path, broker_url=BROKER))
            with request_context("cli-req-42"):
                tagged = app.send_task("vlmops.reindex", args=["toys"])
            untagged = app.send_task("vlmops.reindex", args=["toys"])
            for job in (tagged, untagged):
                job.get(timeout=120, propagate=False)
                assert job.state == "FAILURE" and "no collection 'toys'" in str(job.result)
        finally:
            stop_worker(worker)
    # what each job sent the service it called
    assert [(path, h.get("x-request-id")) for path, h in search.requests] == [
        ("/collections/list", "cli-req-42"),
        ("/collections/list", untagged.id),
    ]
    # every line is a JSON object but Celery's shutdown notice (printed by its signal handler, not logged)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert [line for line in lines if not line.startswith("{")] == ["worker: Warm shutdown (MainProcess)"]
    rows = [json.loads(line) for line in lines if line.startswith("{")]
    for job, rid in ((tagged, "cli-req-42"), (untagged, untagged.id)):
        mine = [r for r in rows if r.get("request_id") == rid]
        assert {r["service"] for r in mine} == {"vlmops-worker"}
        failed = [r for r in mine if r["logger"] == "celery.app.trace"]
        assert len(failed) == 1 and failed[0]["level"] == "ERROR" and job.id in failed[0]["message"]
        assert "NotFound: no collection 'toys'" in failed[0]["exc"]
        assert any(r["logger"] == "httpx" and "/collections/list" in r["message"] for r in mine)
    (ready,) = [r for r in rows if r["message"].endswith(" ready.")]
    assert "request_id" not in ready  # the worker's own lines, outside any job, have none
