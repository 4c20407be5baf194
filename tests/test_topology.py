"""vlmops across machines, on one: every process on a VLMOPS_HOME of its own, sharing only what a
cluster shares — an ``mlflow server`` (PostgreSQL backend store, artifact proxy), Redis as the broker,
a PostgreSQL catalog, one blob folder (the shared volume or bucket) and the index path (the index's
own volume).

- The toy CLIP is registered from one home; an embedding service on another serves it.
- A search service on a third home ingests.
- A second version is promoted with ``MlflowClient.set_registered_model_alias`` (not the CLI): the
  reconciler in a worker on a fourth home reindexes the collection within its interval, and
  searches never mix versions.
- The search service is SIGKILLed, its home deleted, and it starts again: every collection and
  every acknowledged item is back.
- A finetune job on a trainer home registers a version that the embedding service then serves.
- Keys are on everywhere: each process calls the others with a key of its own (search → embedding,
  worker → search builds and embedding), and the search service's audit log names them.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from mlflow import MlflowClient

from infra.auth import create_key
from infra.images import encode_png, to_base64
from infra.process import ServiceProcess
from infra.toyworld import Domain, Split, ToyWorld
from registry.datasets import write_toy_dataset
from registry.families.clip import ClipModel
from registry.store import RegistryStore
from tests.conftest import make_settings, postgres_database
from tests.servers import mlflow_server
from tests.workers.helpers import SearchWatch, ensure_redis, start_worker, stop_worker
from workers.app import make_app

pytestmark = pytest.mark.slow
MODEL = "vlmops-clip"
N_ITEMS = 64
INTERVAL_S = 1.0
BROKER = "redis://127.0.0.1:6379/12"
# every process calls the others with a key of its own; the services accept the three
SEARCH_KEY, SEARCH_LINE = create_key("search-svc", ["read"])  # search -> embedding
WORKER_KEY, WORKER_LINE = create_key("worker", ["admin"])  # worker -> search builds, embedding
OPERATOR_KEY, OPERATOR_LINE = create_key("operator", ["admin"])  # this test and the CLI
KEYS = "\n".join(line.line() for line in (SEARCH_LINE, WORKER_LINE, OPERATOR_LINE))
AUTH = {"authorization": f"Bearer {OPERATOR_KEY}"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("cluster")
    ensure_redis()
    redis.Redis.from_url(BROKER).flushdb()
    shared = root / "shared"
    for mlflow_db in postgres_database():
        for catalog_db in postgres_database():
            with mlflow_server(mlflow_db, shared / "mlflow-artifacts", root / "mlflow.log") as tracking:
                yield {
                    "root": root,
                    "tracking": tracking,
                    "env": {  # what every process is told: the engines, never a folder of another process
                        "VLMOPS_MLFLOW_TRACKING_URI": tracking,
                        "VLMOPS_CATALOG_URL": catalog_db,
                        "VLMOPS_BROKER_URL": BROKER,
                        "VLMOPS_BLOB_ROOT": str(shared / "blobs"),
                        "VLMOPS_EMBEDDING__MAX_LATENCY_MS": "20000",
                        "VLMOPS_EMBEDDING__REFRESH_INTERVAL_S": "1",
                        "VLMOPS_AUTH__KEYS": KEYS,
                    },
                }


def home(cluster: dict[str, Any], name: str) -> Path:
    path = cluster["root"] / "homes" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def call(url: str, route: str, **body: Any) -> Any:
    resp = httpx.post(f"{url}{route}", json=body, headers=AUTH, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()


def collection(url: str, name: str) -> dict[str, Any]:
    return next(c for c in call(url, "/collections/list") if c["name"] == name)


def test_every_component_on_its_own_disk(
    cluster: dict[str, Any], toy_clip: tuple[ClipModel, dict[str, float]], tmp_path: Path
) -> None:
    env, tracking = cluster["env"], cluster["tracking"]
    laptop = RegistryStore.from_settings(make_settings(home(cluster, "laptop"), mlflow_tracking_uri=tracking))
    laptop.promote(MODEL, laptop.register(MODEL, toy_clip[0]).version)

    emb_env = {**env, "VLMOPS_HOME": str(home(cluster, "embedding"))}
    with ServiceProcess("embedding", env=emb_env, log_path=cluster["root"] / "embedding.log") as emb:
        search_home = home(cluster, "search")
        search_env = {
            **env,
            "VLMOPS_HOME": str(search_home),
            "VLMOPS_INDEX_PATH": str(cluster["root"] / "shared" / "index"),
            "VLMOPS_SEARCH__EMBEDDING_URL": emb.url,
            "VLMOPS_WORKER__GRACE_S": "1",
            "VLMOPS_AUTH__KEY": SEARCH_KEY,
        }
        search = ServiceProcess("search", env=search_env, log_path=cluster["root"] / "search.log").start()
        worker_env = {
            **env,
            "VLMOPS_HOME": str(home(cluster, "worker")),
            "VLMOPS_WORKER__SEARCH_URL": search.url,
            "VLMOPS_WORKER__EMBEDDING_URL": emb.url,
            "VLMOPS_WORKER__RECONCILE_INTERVAL_S": str(INTERVAL_S),
            "VLMOPS_WORKER__PAGE_SIZE": "16",
            "VLMOPS_AUTH__KEY": WORKER_KEY,
        }
        trainer_env = {
            **env,
            "VLMOPS_HOME": str(home(cluster, "trainer")),
            "VLMOPS_WORK_DIR": str(cluster["root"] / "shared" / "jobs"),
        }
        worker = start_worker(worker_env, cluster["root"] / "worker.log", queues="celery")
        try:
            ingested = ingest_and_follow_production(search.url, laptop, tracking)
            audited = audit_lines(cluster["root"] / "search.log")
            assert {("operator", "ingest", "ok"), ("worker", "finish_build", "ok")} <= audited  # each its own key
            search = restart_without_its_home(search, search_home, search_env, ingested)
            finetune_and_serve(cluster, trainer_env, emb.url, laptop)
        finally:
            stop_worker(worker)
            search.stop()
    # nothing but caches on the services' and workers' own disks: no catalog, no index, no artifacts
    for name in ("embedding", "search", "worker", "trainer"):
        files = {p.name for p in home(cluster, name).rglob("*") if p.is_file()}
        assert not files & {"catalog.db", "mlflow.db", "collections.json", "aliases.json"}, (name, files)
        assert not (home(cluster, name) / "index").exists() and not (home(cluster, name) / "mlartifacts").exists()


def ingest_and_follow_production(url: str, laptop: RegistryStore, tracking: str) -> list[str]:
    call(url, "/collections/create", name="toys")
    samples = list(ToyWorld().samples(N_ITEMS, Split.TEST, n_objects=1, start=9000))
    ids: list[str] = []
    for start in range(0, N_ITEMS, 32):
        items = [{"image": to_base64(encode_png(s.image)), "payload": {"label": s.label}} for s in samples[start:][:32]]
        ids += call(url, "/ingest", collection="toys", items=items)["ids"]
    assert collection(url, "toys")["count"] == N_ITEMS and collection(url, "toys")["version"] == "1"

    v2 = laptop.register(MODEL, ClipModel.from_pretrained("vlmops-toy-clip", seed=21)).version
    with SearchWatch(url, "toys", top_k=8, headers=AUTH) as watch:
        MlflowClient(tracking_uri=tracking).set_registered_model_alias(MODEL, "production", v2)  # not the CLI
        moved = time.monotonic()
        while collection(url, "toys")["version"] != v2:
            assert time.monotonic() - moved < 120, f"never reindexed: {collection(url, 'toys')}"
            time.sleep(0.2)
        # the swap can land between two of the watch's searches: watch until one is answered after it
        while v2 not in watch.seen and time.monotonic() - moved < 120:
            time.sleep(0.1)
    seen, failures = watch.seen, watch.failures
    row = collection(url, "toys")
    assert row["count"] == N_ITEMS and row["reindex"]["state"] == "succeeded" and row["reindex"]["version"] == v2
    assert failures == []
    switch = seen.index(v2)
    assert set(seen[:switch]) == {"1"} and set(seen[switch:]) == {v2}, "a search went back to the old version"
    # no second reindex was enqueued once the collection was in sync
    time.sleep(3 * INTERVAL_S)
    assert collection(url, "toys")["reindex"]["task_id"] == row["reindex"]["task_id"]
    shown_by_the_cli_and_metrics(url, v2)
    return ids


def shown_by_the_cli_and_metrics(url: str, version: str) -> None:
    from click.testing import CliRunner

    from services.cli import main

    out = CliRunner().invoke(
        main, ["collections"], env={"VLMOPS_WORKER__SEARCH_URL": url, "VLMOPS_AUTH__KEY": OPERATOR_KEY}
    )
    assert out.exit_code == 0, out.output
    (line,) = [ln for ln in out.output.splitlines() if ln.startswith("toys ")]
    assert line.split()[1:4] == [MODEL, version, str(N_ITEMS)] and f"done (v{version})" in line
    deadline = time.monotonic() + 30  # the search service refreshes its catalog gauges on a timer
    while True:
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        if f'vlmops_collection_items{{collection="toys",version="{version}"}} {N_ITEMS}.0' in metrics:
            break
        assert time.monotonic() < deadline, [m for m in metrics.splitlines() if "vlmops_collection" in m]
        time.sleep(0.5)
    assert 'vlmops_reindex_failures{collection="toys"} 0.0' in metrics
    assert 'vlmops_reindex_active{collection="toys"} 0.0' in metrics


def audit_lines(log: Path) -> set[tuple[str, str, str]]:
    """(key, operation, outcome) of the audit lines the service wrote to its stdout."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.startswith('{"ts"')]
    return {(r["key"], r["operation"], r["outcome"]) for r in rows}


def restart_without_its_home(
    search: ServiceProcess, search_home: Path, search_env: dict[str, str], ids: list[str]
) -> ServiceProcess:
    before = collection(search.url, "toys")
    search.kill()  # the server and its API worker, at once
    search.stop()
    shutil.rmtree(search_home)
    search_home.mkdir()
    again = ServiceProcess("search", env=search_env, log_path=search_home.parent.parent / "search2.log").start()
    after = collection(again.url, "toys")
    assert (after["count"], after["version"], after["physical"]) == (
        before["count"],
        before["version"],
        before["physical"],
    )
    for item_id in ids:  # every acknowledged item, searchable by id, with its own vector first
        hits = call(again.url, "/search", collection="toys", item_id=item_id, top_k=1)
        assert hits[0]["id"] == item_id and hits[0]["version"] == before["version"]
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    return again


def finetune_and_serve(
    cluster: dict[str, Any], trainer_env: dict[str, str], emb_url: str, laptop: RegistryStore
) -> None:
    data = write_toy_dataset(cluster["root"] / "shared" / "datasets" / "shifted", 96, Domain.SHIFTED, Split.TRAIN)
    trainer = start_worker(trainer_env, cluster["root"] / "trainer.log", queues="train")
    try:
        app = make_app(make_settings(home(cluster, "client"), broker_url=BROKER))
        config = {"max_steps": 6, "batch_size": 32, "lr": 5e-3, "lora_r": 4, "checkpoint_every": 3, "eval_fraction": 0}
        out = app.send_task("vlmops.finetune", args=[f"{MODEL}/1", str(data)], kwargs={"config": config}).get(
            timeout=300
        )
    finally:
        stop_worker(trainer)
    assert any((cluster["root"] / "shared" / "jobs" / "finetune").rglob("*")), "checkpoints not on the work volume"
    tuned = laptop.load(laptop.get(MODEL, out["version"]))
    assert isinstance(tuned, ClipModel)
    resp = httpx.post(
        f"{emb_url}/embed_text",
        json={"items": [{"text": "a red circle", "model_version": out["version"]}]},
        headers=AUTH,
        timeout=120,
    )
    assert resp.status_code == 200, resp.text
    (row,) = resp.json()
    assert row["version"] == out["version"]
    expected = tuned.encode_text(["a red circle"])[0][0].numpy()
    np.testing.assert_allclose(np.asarray(row["vector"], dtype=np.float32), expected, atol=1e-4)
