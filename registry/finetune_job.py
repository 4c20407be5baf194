"""A finetune job end to end: validate the data, train (resuming if a checkpoint exists), track it
in MLflow, register the result with its lineage. Run by the ``vlmops.finetune`` Celery task.

The job's work folder is keyed by (base version, dataset hash, hyperparameters, target name), so a
redelivered job finds its checkpoint and its MLflow run and goes on; a job that already finished
returns the version it registered instead of training again.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infra.errors import InvalidInput
from infra.settings import Settings, resolve_device
from registry.datasets import load_pairs
from registry.evaluation import EvalReport
from registry.families.clip import ClipModel
from registry.finetune import FinetuneConfig, finetune, plot_history, work_key
from registry.gate import eval_tag
from registry.store import RegistryStore, mlflow_key

log = logging.getLogger(__name__)

FINETUNE_EXPERIMENT = "vlmops-finetune"
RESULT_FILE = "result.json"
RUN_FILE = "mlflow_run.json"


def run_finetune_job(
    settings: Settings,
    base_ref: str,
    dataset: str,
    config: FinetuneConfig,
    name: str | None = None,
    eval_dataset: str | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> dict[str, Any]:
    store = RegistryStore.from_settings(settings)
    base = store.resolve(base_ref)
    if base.family != "clip":
        raise InvalidInput(f"{base.ref} is a {base.family} model; finetuning takes a CLIP version")
    data = load_pairs(dataset)  # every row checked before anything trains
    if eval_dataset:
        train, held = data, load_pairs(eval_dataset, require_captions=False)  # labels only: class queries
    elif config.eval_fraction > 0:
        train, held = data.split(config.eval_fraction, config.seed)
    else:
        train, held = data, None
    target = name or base.name
    key = work_key(base.ref, f"{data.content_hash}/{held.content_hash if held else '-'}", config, target)
    workdir = settings.jobs_dir / "finetune" / key
    done = workdir / RESULT_FILE
    if done.is_file():
        log.info("finetune %s already finished: %s", key, done)
        return dict(json.loads(done.read_text()))

    client = store.client
    run_id = _run(store, workdir, base.ref, data.content_hash, data.source, config, target)
    device = resolve_device(settings.device)
    model = store.load(base, device)
    assert isinstance(model, ClipModel)

    def on_step(step: int, loss: float, temperature: float) -> None:
        client.log_metric(run_id, "train_loss", loss, step=step)
        client.log_metric(run_id, "logit_scale", temperature, step=step)

    def on_eval(epoch: int, report: EvalReport) -> None:
        for k, v in report.metrics.items():
            client.log_metric(run_id, f"eval.{mlflow_key(k)}", v, step=epoch)

    result = finetune(model, train, held, config, workdir, progress=progress, on_eval=on_eval, on_step=on_step)
    final = result.history["eval"][-1] if result.history["eval"] else {}
    base_eval = result.history["eval"][0] if result.history["eval"] else {}
    metrics = {k: float(v) for k, v in final.items() if k != "epoch"}
    lora = {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout}
    lora |= {"target_modules": config.target_modules}
    tags = {
        "base_model": base.name,
        "base_version": base.version,
        "dataset_hash": data.content_hash,
        "dataset": data.source,
        "finetune_mode": config.mode,
        "lora_config": json.dumps(lora) if config.mode == "lora" else "none",
        "seed": str(config.seed),
        "training_run_id": run_id,
        "source": f"vlmops finetune of {base.ref}",
    }
    if held is not None:  # the held-out figures double as a stored eval for the gate
        tags[eval_tag(held.content_hash)] = json.dumps({"metrics": metrics, "at": 0.0, "dataset": held.source})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        plot_history(result.history, folder / "training.png", ["t2i_recall@1", "i2t_recall@1", "zero_shot_acc"])
        (folder / "eval_report.json").write_text(
            json.dumps({"base": base_eval, "final": final, "history": result.history["eval"]}, indent=2)
        )
        (folder / "config.json").write_text(config.model_dump_json(indent=2))
        client.log_artifacts(run_id, str(folder), "report")
    if (workdir / "adapter").is_dir():
        (workdir / "adapter" / "base.json").write_text(json.dumps({"model": base.name, "version": base.version}))
        client.log_artifacts(run_id, str(workdir / "adapter"), "adapter")
    client.log_metric(run_id, "trainable_params", result.trainable_params)
    client.log_metric(run_id, "total_params", result.total_params)
    earlier = [v for v in store.versions(target) if v.tags.get("training_run_id") == run_id]
    if earlier:  # registered before a crash that came ahead of result.json: not registered twice
        info = earlier[0]
    else:
        info = store.register(
            target, model, tags=tags, metrics=metrics, description=f"finetuned from {base.ref}", run_id=run_id
        )
    client.set_terminated(run_id, "FINISHED")
    out = {
        "name": info.name,
        "version": info.version,
        "base": base.ref,
        "dataset_hash": data.content_hash,
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
        "run_id": run_id,
        "base_metrics": {k: v for k, v in base_eval.items() if k != "epoch"},
        "metrics": metrics,
        "seconds": result.seconds,
    }
    done.write_text(json.dumps(out, indent=2))
    return out


def _run(
    store: RegistryStore,
    workdir: Path,
    base_ref: str,
    dataset_hash: str,
    dataset: str,
    config: FinetuneConfig,
    target: str,
) -> str:
    """The job's MLflow run: the one recorded in its work folder (a resumed job), else a new one."""
    workdir.mkdir(parents=True, exist_ok=True)
    marker = workdir / RUN_FILE
    if marker.is_file():
        return str(json.loads(marker.read_text())["run_id"])
    client = store.client
    run = client.create_run(
        store.experiment_id(FINETUNE_EXPERIMENT),
        run_name=f"finetune-{base_ref}",
        tags={"vlmops.model": target, "base": base_ref, "dataset_hash": dataset_hash},
    )
    rid = run.info.run_id
    for k, v in config.model_dump().items():
        client.log_param(rid, k, json.dumps(v) if isinstance(v, list) else str(v))
    client.log_param(rid, "base", base_ref)
    client.log_param(rid, "dataset", dataset[:6000])
    client.log_param(rid, "dataset_hash", dataset_hash)
    marker.write_text(json.dumps({"run_id": rid}))
    return rid
