"""The finetune job through a real Celery worker: tracked in MLflow, registered with its lineage,
and resumed from its checkpoint when the worker is killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import torch

from infra.settings import Settings
from infra.toyworld import Domain, Split
from registry.datasets import load_pairs, write_toy_dataset
from registry.families.clip import ClipModel
from registry.store import RegistryStore
from tests.workers.helpers import ensure_redis, start_worker, stop_worker
from workers.app import make_app

pytestmark = pytest.mark.slow
MODEL = "vlmops-clip"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, toy_clip: tuple[ClipModel, dict[str, float]]) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("finetune-home")
    store = RegistryStore.from_settings(Settings(home=home))
    store.promote(MODEL, store.register(MODEL, toy_clip[0]).version)
    train = write_toy_dataset(home / "train", 192, Domain.SHIFTED, Split.TRAIN)
    held = write_toy_dataset(home / "held", 48, Domain.SHIFTED, Split.TEST)
    return {"home": home, "store": store, "train": str(train), "held": str(held)}


@pytest.fixture()
def env(world: dict[str, Any]) -> Iterator[dict[str, str]]:
    yield {"VLMOPS_HOME": str(world["home"])}


def test_finetune_job_tracks_registers_and_serves_a_new_version(
    world: dict[str, Any], env: dict[str, str], tmp_path: Path, toy_clip: tuple[ClipModel, dict[str, float]]
) -> None:
    store: RegistryStore = world["store"]
    app = make_app(Settings(home=world["home"]))  # the embedded (sqlite) broker
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        config = {"max_steps": 24, "batch_size": 32, "lr": 5e-3, "lora_r": 4, "checkpoint_every": 8}
        task = app.send_task(
            "vlmops.finetune",
            args=[f"{MODEL}@production", world["train"]],
            kwargs={"config": config, "eval_dataset": world["held"]},
        )
        out = task.get(timeout=300)
    finally:
        stop_worker(worker)
    assert out["steps"] == 24 and out["resumed_from"] == 0 and out["base"] == f"{MODEL}/1"
    info = store.get(MODEL, out["version"])
    assert info.tags["base_version"] == "1" and info.tags["base_model"] == MODEL
    assert info.tags["dataset_hash"] == load_pairs(world["train"]).content_hash
    assert json.loads(info.tags["lora_config"])["r"] == 4
    assert "candidate" in info.aliases

    client = store.client
    run = client.get_run(out["run_id"])
    assert client.get_model_version(MODEL, out["version"]).run_id == out["run_id"]  # lineage in MLflow itself
    assert run.data.params["lora_r"] == "4" and run.data.params["dataset_hash"] == info.tags["dataset_hash"]
    losses = client.get_metric_history(out["run_id"], "train_loss")
    assert sorted(m.step for m in losses) == list(range(1, 25))
    evals = client.get_metric_history(out["run_id"], "eval.zero_shot_acc")
    assert sorted(m.step for m in evals) == [0, 1, 2, 3, 4]  # the base, then each epoch (192 // 32 = 6 steps)
    files = {a.path for folder in ("report", "adapter", "model") for a in client.list_artifacts(out["run_id"], folder)}
    assert {"report/training.png", "report/eval_report.json", "report/config.json"} <= files
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/base.json"} <= files
    assert "model/open_clip_model.safetensors" in files

    tuned = store.load(info)
    images = list(load_pairs(world["held"]).images[:6])
    after, before = tuned.encode_images(images), toy_clip[0].encode_images(images)  # type: ignore[attr-defined]
    assert after.shape == before.shape and (after - before).abs().max() > 1e-3
    assert torch.allclose(after.norm(dim=-1), torch.ones(6), atol=1e-4)


def test_a_bad_dataset_fails_before_training_and_eval_runs_as_a_job(
    world: dict[str, Any], env: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "nowhere.png", "caption": "a red circle"}\n{"image": "x.png", "caption": ""}\n')
    app = make_app(Settings(home=world["home"]))
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        task = app.send_task("vlmops.finetune", args=[f"{MODEL}@production", str(bad)])
        with pytest.raises(Exception, match="row 1: image 'nowhere.png' not found") as err:
            task.get(timeout=120)
        # the same worker then scores a version as an eval job; the figures are stored on the version
        scored = app.send_task("vlmops.evaluate", args=[MODEL, ["1"], world["held"]]).get(timeout=120)
    finally:
        stop_worker(worker)
    assert "row 2" in str(err.value)
    assert 0.0 <= scored["v1"]["zero_shot_acc"] <= 1.0 and "t2i_r_precision" in scored["v1"]
    held_hash = load_pairs(world["held"]).content_hash
    assert any(k == f"eval.{held_hash[:16]}" for k in world["store"].get(MODEL, "1").tags)
    runs = world["store"].client.search_runs([world["store"].experiment_id("vlmops-finetune")])
    assert all(r.data.params.get("dataset") != str(bad) for r in runs)  # no run was even started


@pytest.mark.parametrize("broker", ["redis", "embedded"])
def test_a_killed_finetune_resumes_from_its_checkpoint(world: dict[str, Any], tmp_path: Path, broker: str) -> None:
    env = {"VLMOPS_HOME": str(world["home"])}
    if broker == "redis":
        ensure_redis()
        env |= {"VLMOPS_BROKER_URL": "redis://127.0.0.1:6379/10", "VLMOPS_WORKER__VISIBILITY_TIMEOUT_S": "3"}
        redis.Redis.from_url(env["VLMOPS_BROKER_URL"]).flushdb()
    app = make_app(Settings(home=world["home"], broker_url=env.get("VLMOPS_BROKER_URL")))
    config = {
        "max_steps": 60,
        "batch_size": 32,
        "checkpoint_every": 5,
        "lr": 1e-3,
        "seed": 5 if broker == "redis" else 6,
    }
    first = start_worker(env, tmp_path / "worker1.log")
    task = app.send_task("vlmops.finetune", args=[f"{MODEL}/1", world["train"]], kwargs={"config": config})
    deadline = time.monotonic() + 180
    while not (task.state == "PROGRESS" and (task.info or {}).get("done", 0) >= 20):
        assert time.monotonic() < deadline, f"the job never got going: {task.state}"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # mid-run: the job is unacknowledged
    first.wait()
    second = start_worker(env, tmp_path / "worker2.log")  # Redis redelivers; the embedded broker requeues at start
    try:
        out = task.get(timeout=300)
    finally:
        stop_worker(second)
    assert out["steps"] == 60
    # killed at step 20 or later: the last checkpoint (every 5 steps and at each epoch end) is at 15 or later
    assert 15 <= out["resumed_from"] < 60, out["resumed_from"]
    steps = {m.step for m in world["store"].client.get_metric_history(out["run_id"], "train_loss")}
    assert steps == set(range(1, 61))  # one MLflow run across both workers
