"""The ``vlmops`` commands for training data, finetune jobs and evaluation (added to ``vlmops`` by
``services.cli``)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from infra.settings import Settings


@click.group()
def datasets() -> None:
    """Image–text pair and labelled-image datasets: validate, or write toy ones."""


@datasets.command("validate")
@click.argument("source")
def datasets_validate(source: str) -> None:
    """Check every row of SOURCE (JSONL, CSV, a folder, or a folder per class); print its size and content hash.

    Rows need a caption (finetuning and caption retrieval) or a label (class-query evaluation), or both."""
    from registry.datasets import load_pairs

    data = load_pairs(source, require_captions=False, lazy=True)
    n_classes = len({r.label for r in data.rows if r.label is not None})
    captions = {c for c in data.captions if c}
    click.echo(
        f"{source}: {len(data)} rows, {data.n_captioned} with a caption ({len(captions)} distinct), "
        f"{data.n_labelled} with a label ({n_classes or 'no'} classes); content hash {data.content_hash}"
    )
    if data.n_captioned < len(data):
        click.echo(f"  {len(data) - data.n_captioned} rows have no caption: usable for evaluation, not finetuning")


@datasets.command("toy")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--n", default=1000, show_default=True)
@click.option("--domain", type=click.Choice(["plain", "shifted"]), default="plain", show_default=True)
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="train", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--tasks", is_flag=True, help="1–3 objects per image, with questions and boxes (task models' eval)")
def datasets_toy(folder: Path, n: int, domain: str, split: str, seed: int, tasks: bool) -> None:
    """Write N toy-world image–caption pairs (PNG files + pairs.jsonl) into FOLDER."""
    from infra.toyworld import Domain, Split
    from registry.datasets import write_toy_dataset

    out = write_toy_dataset(folder, n, Domain(domain), Split(split), seed, n_objects=None if tasks else 1, tasks=tasks)
    click.echo(str(out))


@click.command()
@click.option("--base", default=None, help="the CLIP version to start from (default: production of the model)")
@click.option("--dataset", required=True, help="image–text pairs: JSONL, CSV or a folder")
@click.option("--eval-dataset", default=None, help="held-out pairs or labelled images (default: a split of --dataset)")
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


def _ks(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        ks = tuple(sorted({int(k) for k in value.split(",") if k.strip()}))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of whole numbers") from None
    if not ks or ks[0] < 1:
        raise click.BadParameter(f"{value!r}: every K is a whole number of 1 or more")
    return ks


def _templates(_ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    for template in value:
        if template.count("{}") != 1 or template.replace("{}", "").count("{") or template.count("}") != 1:
            raise click.BadParameter(f"{template!r}: a class query holds the class name as one '{{}}'")
    return value


@click.command("eval")
@click.argument("name")
@click.argument("version")
@click.option("--dataset", required=True, help="held-out images with captions and/or class labels")
@click.option("--against", default="production", show_default=True, help="an alias or version to compare with")
@click.option("--k", "ks", callback=_ks, default=None, help="cut-offs of the class queries, e.g. 200,1000 [10,100]")
@click.option(
    "--class-queries",
    multiple=True,
    callback=_templates,
    help="prompt template of the class queries, e.g. 'a photo of {}' (repeatable, ensembled) [vlmops' own four]",
)
@click.option("--per-class", is_flag=True, help="print the per-class table, base against candidate")
@click.option(
    "--json",
    "json_out",
    type=click.Path(path_type=Path),
    default=None,
    help="write the reports here (per version: metrics and per_class[label][metric]); with --per-class the "
    "table goes beside it as .csv and .png",
)
def eval_cmd(
    name: str,
    version: str,
    dataset: str,
    against: str,
    ks: tuple[int, ...] | None,
    class_queries: tuple[str, ...],
    per_class: bool,
    json_out: Path | None,
) -> None:
    """Score VERSION (and the version it is compared with) on one held-out set; logged to MLflow.

    Captioning, VQA and grounding versions: caption word accuracy, VQA accuracy per kind of question,
    grounding recall at IoU 0.5, on a task dataset (`vlmops datasets toy --tasks` writes one). CLIP versions:
    caption retrieval (t2i/i2t at 1, 5, 10 and every --k), class queries over every image (Recall@K,
    Precision@K, R-Precision per class, macro and micro) and zero-shot accuracy."""
    from infra.errors import NotFound
    from registry.datasets import load_pairs
    from registry.evaluation import DEFAULT_CLASS_KS, DEFAULT_KS, table
    from registry.families.clip import DEFAULT_TEMPLATES
    from registry.gate import comparison, evaluate_task_versions, evaluate_versions
    from registry.store import RegistryStore
    from registry.task_quality import TASK_OF_FAMILY

    settings = Settings()
    store = RegistryStore.from_settings(settings)
    versions = [store.resolve(f"{name}/{version}")]
    try:
        other = store.resolve(f"{name}/{against}" if against.isdigit() else f"{name}@{against}")
        if other.version != versions[0].version:
            versions.append(other)
    except NotFound:
        click.echo(f"({name} has no {against!r} version to compare with)")
    if versions[0].family in TASK_OF_FAMILY:  # a captioning, VQA or grounding version: its task's figures
        reports, _ = evaluate_task_versions(store, settings, versions, dataset)
        click.echo(table(reports))
        if json_out:
            json_out.write_text(json.dumps({k: json.loads(r.to_json()) for k, r in reports.items()}, indent=2))
        return
    data = load_pairs(dataset, require_captions=False, lazy=True)
    class_ks = ks or DEFAULT_CLASS_KS
    reports = evaluate_versions(
        store,
        settings,
        versions,
        data,
        sorted({*DEFAULT_KS, *class_ks}),
        class_ks,
        class_queries or DEFAULT_TEMPLATES,
    )
    click.echo(table(reports))
    classes = comparison(reports)
    if per_class:
        if classes is not None:
            click.echo("\n" + classes.text())
        elif not any(r.per_class for r in reports.values()):
            click.echo("\n(no class labels in this dataset: no per-class figures)")
        else:
            for label, rep in reports.items():
                click.echo(f"\nper class, {label}:")
                for cls, row in rep.per_class.items():
                    figures = "  ".join(f"{m} {row[m]:.4f}" for m in rep.class_metric_names())
                    n, acc = int(row["n_images"]), row["zero_shot_acc"]
                    click.echo(f"  {cls:<22} n={n:<6} {figures}  zero-shot {acc:.3f}")
    if json_out:
        json_out.write_text(json.dumps({k: json.loads(r.to_json()) for k, r in reports.items()}, indent=2))
        if per_class and classes is not None:
            classes.write_csv(json_out.with_suffix(".csv"))
            classes.plot(json_out.with_suffix(".png"))
            click.echo(f"wrote {json_out}, {json_out.with_suffix('.csv')}, {json_out.with_suffix('.png')}")
