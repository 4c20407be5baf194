"""Reindex through a real Celery worker while a client searches: no failed search, no mixed versions,
the same items before and after. On the Redis broker and on the embedded (sqlite) one."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from infra.images import encode_png, to_base64
from infra.toyworld import Split, ToyWorld
from registry.families.clip import ClipModel
from tests.conftest import make_settings
from tests.workers.helpers import (
    MODEL,
    SearchWatch,
    call,
    count,
    ensure_redis,
    item_ids,
    kill_mid_job,
    start_worker,
    stop_worker,
)

pytestmark = pytest.mark.slow
N_ITEMS = 96


def make_collection(url: str, name: str) -> None:
    call(url, "/collections/create", name=name)
    samples = list(ToyWorld().samples(N_ITEMS, Split.TEST, n_objects=1, start=7000))
    for start in range(0, N_ITEMS, 48):
        items = [
            {"image": to_base64(encode_png(s.image)), "payload": {"label": s.label}}
            for s in samples[start : start + 48]
        ]
        call(url, "/ingest", collection=name, items=items)


@pytest.mark.parametrize("broker", ["redis", "embedded"])
def test_reindex_under_search_load_never_mixes_versions(stack: dict[str, Any], broker: str, tmp_path: Path) -> None:
    name = f"toys-{broker}"
    url = stack["search"]
    make_collection(url, name)
    v2 = stack["store"].register(MODEL, ClipModel.from_pretrained("vlmops-toy-clip", seed=7)).version
    env = dict(stack["env"])
    if broker == "redis":
        ensure_redis()
        env["VLMOPS_BROKER_URL"] = "redis://127.0.0.1:6379/7"
        redis.Redis.from_url(env["VLMOPS_BROKER_URL"]).flushdb()  # nothing left from an earlier run
    before = count(url, name)
    assert before == (N_ITEMS, "1")

    worker = start_worker(env, tmp_path / "worker.log")
    try:
        from workers.app import make_app

        app = make_app(make_settings(stack["home"], broker_url=env.get("VLMOPS_BROKER_URL")))
        with SearchWatch(url, name) as watch:
            out = app.send_task("vlmops.reindex", args=[name, v2]).get(timeout=240)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
    seen, failures = watch.seen, watch.failures
    assert out["version"] == v2 and out["count"] == N_ITEMS
    assert failures == []
    # a search in flight at the swap answers from the old collection; the next one from the new
    after = call(url, "/search", collection=name, text="a red circle", top_k=5)
    seen.extend({h["version"] for h in after})
    assert seen and seen[0] == "1" and seen[-1] == v2
    switch = seen.index(v2)
    assert set(seen[:switch]) == {"1"} and set(seen[switch:]) == {v2}, "a search went back to the old version"
    assert count(url, name) == (N_ITEMS, v2)


def test_a_killed_worker_is_redelivered_and_the_job_completes(stack: dict[str, Any], tmp_path: Path) -> None:
    ensure_redis()
    name = "toys-killed"
    url = stack["search"]
    make_collection(url, name)
    v3 = stack["store"].register(MODEL, ClipModel.from_pretrained("vlmops-toy-clip", seed=11)).version
    broker = "redis://127.0.0.1:6379/8"
    redis.Redis.from_url(broker).flushdb()
    env = {
        **stack["env"],
        "VLMOPS_BROKER_URL": broker,
        "VLMOPS_WORKER__PAGE_SIZE": "2",
        "VLMOPS_WORKER__VISIBILITY_TIMEOUT_S": "3",
    }
    from workers.app import make_app

    app = make_app(make_settings(stack["home"], broker_url=broker))
    first = start_worker(env, tmp_path / "worker1.log")
    result = app.send_task("vlmops.reindex", args=[name, v3])
    kill_mid_job(first, result, done=10)
    assert count(url, name) == (N_ITEMS, "1")  # nothing swapped yet
    second = start_worker(env, tmp_path / "worker2.log")
    try:
        out = result.get(timeout=240)
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=30)
    assert out["count"] == N_ITEMS and out["version"] == v3
    assert count(url, name) == (N_ITEMS, v3)


def wait_for_version(url: str, name: str, version: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while count(url, name)[1] != version:
        assert time.monotonic() < deadline, f"{name} never reached version {version}: {count(url, name)}"
        time.sleep(0.3)


def test_promote_and_rollback_reindex_the_collections_of_the_model(
    stack: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from services.cli import main

    ensure_redis()
    url = stack["search"]
    name = "toys-rollback"
    make_collection(url, name)
    store = stack["store"]
    production = store.by_alias(MODEL, "production").version
    new = store.register(MODEL, ClipModel.from_pretrained("vlmops-toy-clip", seed=13)).version
    broker = "redis://127.0.0.1:6379/11"
    redis.Redis.from_url(broker).flushdb()
    # the reconciler on, with an interval far beyond the test: only the CLI's request makes it act
    env = {**stack["env"], "VLMOPS_BROKER_URL": broker, "VLMOPS_WORKER__RECONCILE": "true"}
    env["VLMOPS_WORKER__RECONCILE_INTERVAL_S"] = "3600"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    worker = start_worker(env, tmp_path / "worker.log")
    runner = CliRunner()
    try:
        out = runner.invoke(main, ["models", "promote", MODEL, new, "--force", "--reason", "try it"])
        assert out.exit_code == 0, out.output
        assert f"reindex of '{name}' to version {new} enqueued" in out.output
        wait_for_version(url, name, new)
        out = runner.invoke(main, ["models", "rollback", MODEL, "--reason", "worse in production"])
        assert out.exit_code == 0, out.output
        assert f"{new} -> {production} (rolled back)" in out.output
        assert f"reindex of '{name}' to version {production} enqueued" in out.output
        wait_for_version(url, name, production)
    finally:
        stop_worker(worker)
    assert store.by_alias(MODEL, "production").version == production
    assert count(url, name) == (N_ITEMS, production)
    hits = call(url, "/search", collection=name, text="a red circle", top_k=5)
    assert {h["version"] for h in hits} == {production}
    last = store.events(MODEL)[-1]
    assert (last.action, last.version, last.previous, last.reason) == (
        "rollback",
        production,
        new,
        "worse in production",
    )


def test_a_failed_reindex_shows_in_the_cli_and_on_metrics(stack: dict[str, Any]) -> None:
    """What a worker records when a reindex fails is what `vlmops collections` and /metrics show."""
    from click.testing import CliRunner

    from infra.catalog_db import CatalogDB
    from infra.settings import WorkerSettings
    from services.cli import main
    from workers.reconcile import record_end, record_start

    url = stack["search"]
    make_collection(url, "toys-failing")
    db = CatalogDB(make_settings(stack["home"]).catalog_uri)  # the worker's side of the shared catalog
    settings = WorkerSettings(retry_backoff_s=120)
    for _ in range(2):
        record_start(db, "toys-failing", "9", "task-1")
        record_end(db, "toys-failing", "NotFound: model 'vlmops-clip' has no version '9'", settings)
    out = CliRunner().invoke(main, ["collections"], env={"VLMOPS_WORKER__SEARCH_URL": url})
    assert out.exit_code == 0, out.output
    (line,) = [ln for ln in out.output.splitlines() if ln.startswith("toys-failing ")]
    assert "FAILED x2 to v9" in line and "has no version '9'" in line
    assert int(line.split("retry in ")[1].split()[0]) in range(200, 241)  # 120 s doubled, from the second failure
    deadline = time.monotonic() + 30  # gauges are refreshed on the janitor's timer
    while 'vlmops_reindex_failures{collection="toys-failing"} 2.0' not in httpx.get(f"{url}/metrics").text:
        assert time.monotonic() < deadline, "the failure never reached /metrics"
        time.sleep(0.5)


def test_the_worker_embeds_each_image_as_the_embedding_service_does(stack: dict[str, Any]) -> None:
    """A reindex embeds in the worker (the pinned version from the registry, no trip through the service):
    its vectors must be the service's, or a rebuilt collection would answer queries a little off."""
    from infra.clients import EmbeddingClient
    from workers.embedder import EmbedderCache

    blobs = [encode_png(s.image) for s in ToyWorld().samples(40, Split.TEST, start=9100)]
    blobs.append(jpeg_of(ToyWorld().sample(9200, Split.TEST).image.resize((150, 90))))  # resized and cropped
    service = EmbeddingClient(stack["env"]["VLMOPS_WORKER__EMBEDDING_URL"]).embed_image(blobs, model_version="1")
    assert set(service.versions) == {"1"}
    local = EmbedderCache(make_settings(stack["home"])).get(MODEL, "1")(blobs)
    assert local.dtype == np.float32 and local.shape == service.vectors.shape
    assert np.allclose(np.linalg.norm(local, axis=1), 1.0, atol=1e-5)
    assert np.abs(local - service.vectors).max() <= 2e-6


def jpeg_of(image: Any) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def test_a_rebuild_of_thousands_survives_a_kill_and_concurrent_ingests(stack: dict[str, Any], tmp_path: Path) -> None:
    """1,500 items rebuilt in pages of 64 while a client keeps ingesting; the worker is SIGKILLed mid-job and
    the job is redelivered. At the end every item is there once, and every vector is the new version's: an
    image searched by itself finds itself first with a score of 1."""
    import threading

    ensure_redis()
    name, url, n = "toys-thousands", stack["search"], 1500
    call(url, "/collections/create", name=name)
    samples = list(ToyWorld().samples(n + 120, Split.TRAIN, start=40_000))
    blobs = [encode_png(s.image) for s in samples]
    for start in range(0, n, 250):
        items = [{"image": to_base64(b), "payload": {"n": start + i}} for i, b in enumerate(blobs[start : start + 250])]
        call(url, "/ingest", collection=name, items=items)
    v = stack["store"].register(MODEL, ClipModel.from_pretrained("vlmops-toy-clip", seed=13)).version
    broker = "redis://127.0.0.1:6379/9"
    redis.Redis.from_url(broker).flushdb()
    env = {**stack["env"], "VLMOPS_BROKER_URL": broker, "VLMOPS_WORKER__PAGE_SIZE": "64"}
    env["VLMOPS_WORKER__VISIBILITY_TIMEOUT_S"] = "3"
    from workers.app import make_app

    app = make_app(make_settings(stack["home"], broker_url=broker))
    late, stop = blobs[n:], threading.Event()

    def keep_ingesting() -> None:  # 10 at a time, through the whole rebuild (before, during, after the kill)
        for start in range(0, len(late), 10):
            chunk = late[start : start + 10]
            call(
                url,
                "/ingest",
                collection=name,
                items=[{"image": to_base64(b), "payload": {"late": True}} for b in chunk],
            )
            stop.wait(0.3)

    first = start_worker(env, tmp_path / "worker1.log")
    result = app.send_task("vlmops.reindex", args=[name, v])
    ingesting = threading.Thread(target=keep_ingesting)
    ingesting.start()
    try:
        kill_mid_job(first, result, done=300)
        second = start_worker(env, tmp_path / "worker2.log")
        try:
            out = result.get(timeout=300)
        finally:
            ingesting.join()
            stop_worker(second)
    finally:
        stop.set()
    total = len(set(blobs))  # (two toy images alike would be one item)
    assert out["version"] == v and count(url, name) == (total, v)
    ids = item_ids(url, name)
    assert len(ids) == len(set(ids)) == total  # every item, none twice
    for b in [*late, *blobs[:: n // 40]]:  # every late one, and 40 of the rest
        (hit,) = call(url, "/search", collection=name, image=to_base64(b), top_k=1)
        assert hit["version"] == v and hit["score"] > 0.9999, hit
