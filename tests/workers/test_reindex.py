"""Reindex through a real Celery worker while a client searches: no failed search, no mixed versions,
the same items before and after. On the Redis broker and on the embedded (sqlite) one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from celery.result import AsyncResult

from infra.images import encode_png, to_base64
from infra.toyworld import Split, ToyWorld
from registry.families.clip import ClipModel
from tests.conftest import make_settings, search_stack
from tests.workers.helpers import SearchWatch, ensure_redis, start_worker, stop_worker

pytestmark = pytest.mark.slow
MODEL = "vlmops-clip"
N_ITEMS = 96


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, toy_clip: tuple[ClipModel, dict[str, float]]
) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("reindex-home")
    with search_stack(home, toy_clip[0], MODEL) as (store, emb_url, search_url):
        env = {"VLMOPS_HOME": str(home), "VLMOPS_EMBEDDING__MAX_LATENCY_MS": "10000"}
        env |= {"VLMOPS_WORKER__SEARCH_URL": search_url, "VLMOPS_WORKER__EMBEDDING_URL": emb_url}
        # reindexes to versions that are not production: no reconciler to bring them back meanwhile
        env |= {"VLMOPS_WORKER__PAGE_SIZE": "8", "VLMOPS_WORKER__RECONCILE": "false"}
        yield {"home": home, "store": store, "env": env, "search": search_url}


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


def make_collection(url: str, name: str) -> None:
    call(url, "/collections/create", name=name)
    samples = list(ToyWorld().samples(N_ITEMS, Split.TEST, n_objects=1, start=7000))
    for start in range(0, N_ITEMS, 48):
        items = [
            {"image": to_base64(encode_png(s.image)), "payload": {"label": s.label}}
            for s in samples[start : start + 48]
        ]
        call(url, "/ingest", collection=name, items=items)


def count(url: str, name: str) -> tuple[int, str]:
    row = next(c for c in call(url, "/collections/list") if c["name"] == name)
    return int(row["count"]), str(row["version"])


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


def test_bulk_ingest_job_reads_a_folder(stack: dict[str, Any], tmp_path: Path) -> None:
    ensure_redis()
    url = stack["search"]
    call(url, "/collections/create", name="bulk")
    folder = tmp_path / "images"
    folder.mkdir()
    for i, s in enumerate(ToyWorld().samples(20, Split.VAL, n_objects=1)):
        (folder / f"{i}.png").write_bytes(encode_png(s.image))
    uris = sorted(str(p) for p in folder.iterdir()) + [str(folder / "0.png")]  # a duplicate: stored once
    (folder / "notes.txt").write_bytes(b"not an image")  # in the folder: reported, the job goes on
    (tmp_path / "elsewhere.png").write_bytes((folder / "0.png").read_bytes())  # exists, outside the prefix
    broker = "redis://127.0.0.1:6379/9"
    redis.Redis.from_url(broker).flushdb()
    # the job reads within the same rules as the search service: only under the allowed prefixes
    env = {**stack["env"], "VLMOPS_BROKER_URL": broker, "VLMOPS_SEARCH__INGEST_URI_PREFIXES": json.dumps([str(folder)])}
    from workers.app import make_app

    worker = start_worker(env, tmp_path / "worker.log")
    try:
        app = make_app(make_settings(stack["home"], broker_url=broker))
        result = app.send_task("vlmops.ingest", args=["bulk", uris]).get(timeout=120)
        outside = app.send_task("vlmops.ingest", args=["bulk", [uris[1], str(tmp_path / "elsewhere.png")]])
        with pytest.raises(Exception, match="uri 1: nothing readable at"):
            outside.get(timeout=120)
        # the folder again, as a user sends it: `vlmops ingest --job` follows the job with a progress bar
        again = subprocess.run(
            [str(Path(sys.executable).with_name("vlmops")), "ingest", "bulk", f"{folder}/", "--job"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
    assert result == {
        "collection": "bulk",
        "ingested": 21,
        "stored": 20,
        "skipped": 1,
        "rejected": 0,
        "errors": [],
        "count": 20,
    }
    # the folder again: nothing stored twice, the text file named (and the exit status says so)
    assert again.returncode == 1, again.stderr
    assert "bulk: 0 stored, 20 already there, 1 rejected; 20 items" in again.stdout
    assert f"rejected {folder / 'notes.txt'}: " in again.stderr and "could not be decoded" in again.stderr
    assert "21/21" in again.stderr and "img/s" in again.stderr  # the progress bar: items/s
    assert count(url, "bulk")[0] == 20  # the refused job sent nothing, not even its allowed first page
    hits = call(url, "/search", collection="bulk", text="a red circle", top_k=3)
    assert hits and hits[0]["payload"]["uri"].startswith(str(folder))
    for i in (0, 7, 19):  # the worker's vector of each image is the one the service embeds it to
        (hit,) = call(url, "/search", collection="bulk", image=to_base64((folder / f"{i}.png").read_bytes()), top_k=1)
        assert hit["payload"]["uri"] == str(folder / f"{i}.png") and hit["score"] > 0.9999 and hit["version"] == "1"


def test_a_killed_bulk_ingest_run_again_stores_each_image_once(stack: dict[str, Any], tmp_path: Path) -> None:
    """A bulk ingest of a folder of 1,200 images in pages of 32, SIGKILLed mid-job and redelivered to a new
    worker: it skips what the first one stored (by content hash) and ends with every image once."""
    ensure_redis()
    name, url, n = "bulk-killed", stack["search"], 1200
    call(url, "/collections/create", name=name)
    folder = tmp_path / "images"
    for i, s in enumerate(ToyWorld().samples(n, Split.TRAIN, start=60_000)):
        (folder / f"{i // 100:02d}").mkdir(parents=True, exist_ok=True)
        (folder / f"{i // 100:02d}" / f"{i:05d}.png").write_bytes(encode_png(s.image))
    files = sorted(folder.rglob("*.png"))
    distinct = len({f.read_bytes() for f in files})
    broker = "redis://127.0.0.1:6379/10"
    redis.Redis.from_url(broker).flushdb()
    env = {
        **stack["env"],
        "VLMOPS_BROKER_URL": broker,
        "VLMOPS_WORKER__PAGE_SIZE": "32",
        "VLMOPS_WORKER__VISIBILITY_TIMEOUT_S": "3",
        "VLMOPS_SEARCH__INGEST_URI_PREFIXES": json.dumps([str(folder)]),
    }
    from workers.app import make_app

    app = make_app(make_settings(stack["home"], broker_url=broker))
    first = start_worker(env, tmp_path / "worker1.log")
    result = app.send_task("vlmops.ingest", args=[name], kwargs={"folder": str(folder)})
    kill_mid_job(first, result, done=400)
    stored_before = count(url, name)[0]
    assert 0 < stored_before < distinct
    second = start_worker(env, tmp_path / "worker2.log")
    try:
        out = result.get(timeout=300)
    finally:
        stop_worker(second)
    assert out["ingested"] == n and out["rejected"] == 0
    assert out["skipped"] >= stored_before  # the second run skipped what the first had stored ...
    assert out["stored"] + out["skipped"] == n and out["count"] == distinct  # ... and stored the rest
    ids, cursor = [], None
    while True:
        page = call(url, "/builds/items", collection=name, cursor=cursor, limit=1000)
        ids += [item["id"] for item in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert len(ids) == len(set(ids)) == distinct == count(url, name)[0]  # every image, none twice
    for f in files[:: n // 30]:
        (hit,) = call(url, "/search", collection=name, image=to_base64(f.read_bytes()), top_k=1)
        assert hit["version"] == "1" and hit["score"] > 0.9999, hit


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
    ids, cursor = [], None
    while True:
        page = call(url, "/builds/items", collection=name, cursor=cursor, limit=1000)
        ids += [item["id"] for item in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert len(ids) == len(set(ids)) == total  # every item, none twice
    for b in [*late, *blobs[:: n // 40]]:  # every late one, and 40 of the rest
        (hit,) = call(url, "/search", collection=name, image=to_base64(b), top_k=1)
        assert hit["version"] == v and hit["score"] > 0.9999, hit


def test_a_bulk_page_embedded_before_a_build_started_is_sent_again_with_the_builds_version(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    """The ingest pipeline against the real search service: a rebuild starts after the job embedded its first
    page with the live version alone. The service refuses that page (``missing``), the job embeds it with the
    build's version too and sends it again, so the build holds every item, by its own version."""
    from infra.clients import SearchClient
    from infra.uris import UriPolicy
    from workers.embedder import EmbedderCache
    from workers.pipelines.ingest import FileWork, run_ingest

    name, url = "bulk-racing", stack["search"]
    call(url, "/collections/create", name=name)
    v = stack["store"].register(MODEL, ClipModel.from_pretrained("vlmops-toy-clip", seed=17)).version
    folder = tmp_path / "images"
    folder.mkdir()
    for i, s in enumerate(ToyWorld().samples(40, Split.TRAIN, start=80_000)):
        (folder / f"{i:03d}.png").write_bytes(encode_png(s.image))
    cache = EmbedderCache(make_settings(stack["home"]))
    asked: list[str] = []
    build: dict[str, Any] = {}

    def embedder_for(version: str) -> Any:
        asked.append(version)
        if not build:  # the first page is being embedded by version 1 alone: a rebuild starts now
            build.update(call(url, "/builds/start", collection=name, version=v))
        return cache.get(MODEL, version)

    files = FileWork(UriPolicy([str(folder)], []), 1 << 24, str(stack["home"] / "blobs"))
    try:
        search = SearchClient(url)
        uris = sorted(str(p) for p in folder.iterdir())
        out = run_ingest(name, uris, search, files, embedder_for, page_size=16)
    finally:
        files.close()
    assert (out.stored, out.rejected, out.count) == (40, 0, 40)
    # every page by both versions: the first, embedded before the build, was refused and embedded again
    assert asked[0] == "1" and asked.count("1") == asked.count(v) == 3
    done = call(url, "/builds/finish", collection=name, physical=build["physical"])  # every live item is in it
    assert done["version"] == v and done["count"] == 40
    for f in sorted(folder.iterdir())[::7]:  # each by the build's version: the service embeds the query so
        (hit,) = call(url, "/search", collection=name, image=to_base64(f.read_bytes()), top_k=1)
        assert hit["version"] == v and hit["score"] > 0.9999 and hit["payload"]["uri"] == str(f)
