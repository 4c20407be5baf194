"""The ``vlmops`` commands for training data, finetune jobs and evaluation (added to ``vlmops`` by
``services.cli``)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from infra.settings import Settings


@click.group()
def datasets() -> None:
    """Image–text pair datasets: validate, or write toy ones."""


@datasets.command("validate")
@click.argument("source")
def datasets_validate(source: str) -> None:
    """Check every row of SOURCE (JSONL, CSV or a folder); print its size and content hash."""
    from registry.datasets import load_pairs

    data = load_pairs(source)
    labels = data.labels
    click.echo(
        f"{source}: {len(data)} pairs, {len(set(data.captions))} distinct captions, "
        f"{len(set(labels)) if labels else 'no'} classes; content hash {data.content_hash}"
    )


@datasets.command("toy")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--n", default=1000, show_default=True)
@click.option("--domain", type=click.Choice(["plain", "shifted"]), default="plain", show_default=True)
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="train", show_default=True)
@click.option("--seed", default=0, show_default=True)
def datasets_toy(folder: Path, n: int, domain: str, split: str, seed: int) -> None:
    """Write N toy-world image–caption pairs (PNG files + pairs.jsonl) into FOLDER."""
    from infra.toyworld import Domain, Split
    from registry.datasets import write_toy_dataset

    out = write_toy_dataset(folder, n, Domain(domain), Split(split), seed)
    click.echo(str(out))


@click.command()
@click.option("--base", default=None, help="the CLIP version to start from (default: production of the model)")
@click.option("--dataset", required=True, help="image–text pairs: JSONL, CSV or a folder")
@click.option("--eval-dataset", default=None, help="held-out pairs (default: a split of --dataset)")
@click.option("--name", default=None, help="register under this model name (default: the base's)")
@click.option("--config", "config_file", type=click.Path(exists=True, path_type=Path), help="JSON/TOML/YAML")
@click.option("--mode", type=click.Choice(["lora", "full"]), default=None)
@click.option("--epochs", type=int, default=None)
@click.option("--max-steps", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--lora-r", type=int, default=None)
@click.option("--target-modules", default=None, help="comma-separated module names (default: attn,c_fc,c_proj)")
@click.option("--seed", type=int, default=None)
@click.option("--wait/--no-wait", default=True, help="follow the job with a progress bar, or print its id")
def finetune(
    base: str | None,
    dataset: str,
    eval_dataset: str | None,
    name: str | None,
    config_file: Path | None,
    wait: bool,
    **flags: object,
) -> None:
    """LoRA-finetune a registered CLIP version as a Celery job; the result is registered as a new version."""
    from registry.datasets import load_pairs
    from registry.finetune import FinetuneConfig
    from workers.app import make_app

    settings = Settings()
    if isinstance(flags.get("target_modules"), str):
        flags["target_modules"] = [t.strip() for t in str(flags["target_modules"]).split(",") if t.strip()]
    overrides = {k: v for k, v in flags.items() if v is not None}
    config = FinetuneConfig.build(config_file, **overrides)
    data = load_pairs(dataset)  # bad rows are reported here, before a job is queued
    click.echo(f"dataset {dataset}: {len(data)} pairs, hash {data.content_hash[:16]}")
    base_ref = base or f"{settings.embedding.model_name}@production"
    paths = [str(Path(p).resolve()) if Path(p).exists() else p for p in (dataset, eval_dataset) if p]
    task = make_app(settings).send_task(
        "vlmops.finetune",
        args=[base_ref, paths[0]],
        kwargs={"config": config.model_dump(), "name": name, "eval_dataset": paths[1] if eval_dataset else None},
    )
    click.echo(f"job {task.id}")
    if not wait:
        return
    from workers.follow import follow

    out = follow(task, "finetuning", "step")
    click.echo(json.dumps(out, indent=2))


@click.command("eval")
@click.argument("name")
@click.argument("version")
@click.option("--dataset", required=True, help="held-out image–text pairs")
@click.option("--against", default="production", show_default=True, help="an alias or version to compare with")
@click.option("--per-class", is_flag=True, help="also print per-class figures")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="write the reports here")
def eval_cmd(name: str, version: str, dataset: str, against: str, per_class: bool, json_out: Path | None) -> None:
    """Score VERSION (and the version it is compared with) on one held-out set; logged to MLflow."""
    from infra.errors import NotFound
    from registry.datasets import load_pairs
    from registry.evaluation import table
    from registry.gate import evaluate_versions
    from registry.store import RegistryStore

    settings = Settings()
    store = RegistryStore.from_settings(settings)
    versions = [store.resolve(f"{name}/{version}")]
    try:
        other = store.resolve(f"{name}/{against}" if against.isdigit() else f"{name}@{against}")
        if other.version != versions[0].version:
            versions.append(other)
    except NotFound:
        click.echo(f"({name} has no {against!r} version to compare with)")
    reports = evaluate_versions(store, settings, versions, load_pairs(dataset))
    click.echo(table(reports))
    if per_class:
        for label, rep in reports.items():
            click.echo(f"\nper class, {label}:")
            for cls, row in rep.per_class.items():
                click.echo(
                    f"  {cls:<22} zero-shot {row['zero_shot_acc']:.3f}  "
                    f"t2i R@5 {row.get('t2i_recall@5', float('nan')):.3f}  i2t R@1 {row['i2t_recall@1']:.3f}"
                )
    if json_out:
        json_out.write_text(json.dumps({k: json.loads(r.to_json()) for k, r in reports.items()}, indent=2))
