"""Follow Celery jobs from a client: a progress bar over a job's PROGRESS state, then its result; the
reindexes that follow a promotion."""

from __future__ import annotations

import time
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from tqdm import tqdm

from infra.clients import SearchClient


def follow(
    task: AsyncResult, desc: str, unit: str = "item", timeout_s: float | None = None, done_key: str | None = None
) -> dict[str, Any]:
    """Show ``task``'s progress until it ends; its result. ``done_key``: the result's count of items done (the
    bar ends on it when the job ended between two polls)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with tqdm(desc=desc, unit=unit) as bar:
        while not task.ready():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {task.id} ({desc}) did not finish within {timeout_s:.0f} s")
            info = task.info if isinstance(task.info, dict) else {}
            if info.get("total"):
                bar.total = int(info["total"])
            done = int(info.get("done", 0))
            if done > bar.n:
                bar.update(done - bar.n)  # tqdm's rate (items/s) and ETA follow the updates
            post = {"stage": str(info.get("stage", task.state))}
            if "loss" in info:
                post["loss"] = f"{float(info['loss']):.3f}"
            bar.set_postfix(post, refresh=True)
            time.sleep(0.5)
        out = dict(task.get())
        final = int(out[done_key]) if done_key else bar.total
        if final and bar.n < final:  # done between two polls: the bar ends on the job's own count
            bar.total = bar.total or final
            bar.update(final - bar.n)
    return out


def follow_reindexes(
    app: Celery, search: SearchClient, model: str, version: str, timeout_s: float = 600
) -> list[dict[str, Any]]:
    """Ask the workers to reconcile now, then follow each reindex that brings a collection of ``model``
    to ``version`` (enqueued by that request or by a periodic pass) until every one of them is there.
    Returns the collections' rows as they end."""
    app.send_task("vlmops.reconcile")
    deadline = time.monotonic() + timeout_s
    followed: set[str] = set()
    while True:
        rows = [r for r in search.collections() if r["model"] == model]
        behind = [r for r in rows if r["version"] != version]
        if not behind:
            return rows
        for row in behind:
            job = row.get("reindex") or {}
            if job.get("version") == version and job.get("task_id") and job["task_id"] not in followed:
                followed.add(job["task_id"])
                follow(app.AsyncResult(job["task_id"]), f"reindexing {row['name']}", timeout_s=timeout_s)
        if time.monotonic() > deadline:
            raise TimeoutError(f"collections {[r['name'] for r in behind]} did not reach version {version}")
        time.sleep(0.5)
