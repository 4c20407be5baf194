"""Real Celery workers and a real Redis for the job tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery.result import AsyncResult


def ensure_redis() -> None:
    client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2)
    try:
        client.ping()
        return
    except redis.ConnectionError:
        if shutil.which("redis-server") is None:
            pytest.skip("Redis is not running and redis-server is not installed")
    subprocess.run(
        [
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        check=True,
    )
    for _ in range(50):
        try:
            client.ping()
            return
        except redis.ConnectionError:
            time.sleep(0.1)
    pytest.skip("Redis did not start")


def start_worker(
    env: dict[str, str], log: Path, queues: str | None = None, vlmops: bool = False
) -> subprocess.Popen[bytes]:
    """A real Celery worker (``queues``: e.g. "celery" or "train"; default: both); ``vlmops``: started as
    ``vlmops worker`` (as a deployment starts it) rather than with ``celery worker``."""
    if vlmops:
        cmd = [str(Path(sys.executable).with_name("vlmops")), "worker", "--queues", queues or "celery,train"]
    else:
        cmd = [
            str(Path(sys.executable).with_name("celery")),
            "-A",
            "workers.app",
            "worker",
            "-P",
            "solo",
            "-c",
            "1",
            "--loglevel=INFO",
            "-n",
            f"w{uuid.uuid4().hex[:6]}@%h",
            *(["-Q", queues] if queues else []),
        ]
    return subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True
    )  # noqa: SIM115


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    from infra.process import terminate_group

    terminate_group(proc, 30)


class SearchWatch:
    """``with SearchWatch(url, "toys") as watch:`` searches the collection in a loop on a thread,
    recording the model versions of every answer (``seen``) and every failed or mixed answer."""

    def __init__(
        self,
        url: str,
        collection: str,
        text: str = "a red circle",
        top_k: int = 5,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.headers = headers or {}
        self.body = {"collection": collection, "text": text, "top_k": top_k}
        self.url = url
        self.seen: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                resp = httpx.post(f"{self.url}/search", json=self.body, headers=self.headers, timeout=60)
            except httpx.HTTPError as exc:
                self.failures.append(repr(exc))
                continue
            if resp.status_code != 200:
                self.failures.append(resp.text)
                continue
            versions = {h["version"] for h in resp.json()}
            if len(versions) != 1:
                self.failures.append(f"mixed versions {versions}")
            self.seen.extend(versions)

    def __enter__(self) -> SearchWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


MODEL = "vlmops-clip"


def call(url: str, route: str, **body: Any) -> Any:
    resp = httpx.post(f"{url}{route}", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()


def kill_mid_job(worker: subprocess.Popen[bytes], result: AsyncResult, done: int) -> None:
    """SIGKILL ``worker`` once its job reports ``done`` items: mid-job, unacknowledged."""
    deadline = time.monotonic() + 120
    while not (result.state == "PROGRESS" and (result.info or {}).get("done", 0) >= done):
        assert time.monotonic() < deadline, f"the job never got going: {result.state}"
        time.sleep(0.05)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()


def count(url: str, name: str) -> tuple[int, str]:
    row = next(c for c in call(url, "/collections/list") if c["name"] == name)
    return int(row["count"]), str(row["version"])


def item_ids(url: str, name: str) -> list[str]:
    """The ids of every live item of ``name``, through the rebuild protocol's cursor pages."""
    ids: list[str] = []
    cursor = None
    while True:
        page = call(url, "/builds/items", collection=name, cursor=cursor, limit=1000)
        ids += [item["id"] for item in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            return ids


def fresh_broker(db: int) -> str:
    """A Redis database of its own for one test's jobs, emptied of anything an earlier run left."""
    ensure_redis()
    broker = f"redis://127.0.0.1:6379/{db}"
    redis.Redis.from_url(broker).flushdb()
    return broker
