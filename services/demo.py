"""``vlmops demo``: the main loop on the embedded defaults, with no server to install.

Train (first run) or load the toy CLIP, register and promote it in MLflow (sqlite), start the
embedding service as a real process, embed and classify toy images over HTTP, print the results; search,
finetune, gate, promote and reindex; then the toy captioner, VQA model and grounder through their services
(``services.demo_tasks``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from infra.clients import EmbeddingClient, SearchClient
from infra.errors import ModelFormatError, NotFound
from infra.images import encode_png, to_base64
from infra.locks import file_lock
from infra.process import ServiceProcess, WorkerProcess, terminate_group
from infra.settings import Settings
from infra.toyworld import Domain, Split, ToyWorld, class_labels
from registry.datasets import load_pairs, write_toy_dataset
from registry.evaluation import EvalReport, table
from registry.families.clip import ClipModel
from registry.finetune import FinetuneConfig
from registry.gate import comparison, evaluate_versions, gated_promote
from registry.store import PRODUCTION, RegistryStore, VersionInfo
from registry.task_quality import failed_acceptance
from registry.toy_clip import ToyTrainConfig, train_toy_clip
from registry.toy_tasks import HASH_FILE, METRICS_FILE
from services.client import EmbeddingGrpc
from services.demo_tasks import start_training, task_demo
from workers.app import make_app
from workers.follow import follow, follow_reindexes


def toy_dataset_hash(config: ToyTrainConfig) -> str:
    spec = {"world": asdict(ToyWorld(seed=config.seed)), "train": asdict(config)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def ensure_toy_clip(settings: Settings, seed: int = 0, force: bool = False) -> tuple[ClipModel, dict[str, float]]:
    """The trained toy CLIP, from the cache under VLMOPS_HOME or trained now (and cached)."""
    cache = settings.ensure_home() / f"toy-clip-seed{seed}"
    with file_lock(cache.with_suffix(".lock")):
        return _toy_clip(cache, seed, force)


def _toy_clip(cache: Path, seed: int, force: bool) -> tuple[ClipModel, dict[str, float]]:
    config = ToyTrainConfig(seed=seed)
    wanted = toy_dataset_hash(config)
    if not force and is_toy_clip_cached(cache, seed):
        try:
            return ClipModel.load(cache), json.loads((cache / METRICS_FILE).read_text())
        except (ModelFormatError, OSError, ValueError):
            pass  # a corrupt cache is trained again
    with tqdm(total=config.steps, desc="training toy CLIP", unit="step", mininterval=1.0) as bar:

        def progress(step: int, total: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

        model, metrics = train_toy_clip(config, progress)
    model.save(cache)
    (cache / HASH_FILE).write_text(wanted)
    (cache / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    return model, metrics


def is_toy_clip_cached(cache: Path, seed: int = 0) -> bool:
    """Whether ``cache`` holds a toy CLIP trained by the current recipe (a cache of another is trained again)."""
    try:
        return (cache / METRICS_FILE).is_file() and (cache / HASH_FILE).read_text().strip() == toy_dataset_hash(
            ToyTrainConfig(seed=seed)
        )
    except OSError:
        return False


def register_toy(
    settings: Settings, model: ClipModel, metrics: dict[str, float], seed: int = 0, promote: bool = True
) -> VersionInfo:
    store = RegistryStore.from_settings(settings)
    config = ToyTrainConfig(seed=seed)
    info = store.register(
        settings.embedding.model_name,
        model,
        tags={"dataset_hash": toy_dataset_hash(config), "base_version": "none", "source": "vlmops train-toy"},
        metrics=metrics,
        description="tiny CLIP trained on the toy world",
    )
    if promote:
        store.promote(info.name, info.version, reason="toy model registered by vlmops")
    return info


def ensure_production(settings: Settings, seed: int = 0) -> VersionInfo:
    """Production is the toy CLIP: kept if it is, else an earlier toy version is promoted again (a
    demo run starts from the same base, so its finetune job is found done), else it is registered."""
    store = RegistryStore.from_settings(settings)
    name = settings.embedding.model_name
    toy_hash = toy_dataset_hash(ToyTrainConfig(seed=seed))
    try:
        current = store.by_alias(name, PRODUCTION)
        if current.tags.get("dataset_hash") == toy_hash:
            return current
    except NotFound:
        current = None
    earlier = [v for v in store.versions(name) if v.tags.get("dataset_hash") == toy_hash]
    if earlier:
        store.promote(name, earlier[0].version, reason="demo: start again from the toy base")
    else:
        model, metrics = ensure_toy_clip(settings, seed)
        register_toy(settings, model, metrics, seed=seed, promote=True)
    return store.by_alias(name, PRODUCTION)


def run_demo(settings: Settings, seed: int = 0, finetune: bool = True) -> int:
    t0 = time.perf_counter()
    click.echo(f"VLMOPS_HOME={settings.home.resolve()}  registry={settings.tracking_uri}")
    info = ensure_production(settings, seed)
    click.echo(f"registry: {info.name} version {info.version} is production ({info.tags.get('architecture')})")
    home = settings.home.resolve()
    log_path = home / "demo-embedding.log"
    task_env = {"VLMOPS_HOME": str(home)}
    env = dict(task_env)
    training = start_training(home, home / "demo-training.log", seed, jobs=2)
    if training is not None:
        click.echo(f"training the toy task models in the background, a thread each (log: {home}/demo-training.log)")
        env["OMP_NUM_THREADS"] = "1"  # beside it, the services and the worker on one thread each (see start_training)
    try:
        acc, p_at_10, gain = _clip_demo(settings, env, log_path, seed, finetune)
        click.echo("\ncaptioning, VQA and grounding: the toy task models, through their services")
        if training is not None:
            click.echo("waiting for the toy task models' training: each service starts when its model is ready ...")
        figures = task_demo(settings, task_env, home, seed, training)
    finally:
        terminate_group(training, 30)
    tasks_ok = not failed_acceptance(figures)
    click.echo(f"\nservices stopped; demo took {time.perf_counter() - t0:.0f} s")
    click.echo(
        "to look at the results in a browser: `.venv/bin/vlmops up`, then open http://127.0.0.1:3005/explorer/ "
        "(collections demo-toys and the rest of this demo)"
    )
    return 0 if acc >= 0.9 and p_at_10 >= 0.9 and gain >= 0.1 and tasks_ok else 1


def _clip_demo(
    settings: Settings, env: dict[str, str], log_path: Path, seed: int, finetune: bool
) -> tuple[float, float, float]:
    """The embedding part: retrieval and zero-shot over HTTP and gRPC, search, and the finetune (when asked);
    returns the zero-shot accuracy, precision@10 of the search and the finetune's gain."""
    click.echo("starting the embedding service (bentoml serve) ...")
    with ServiceProcess("embedding", env=env, log_path=log_path) as svc:
        client = EmbeddingClient(svc.url, api_key=settings.auth.key)
        click.echo(f"embedding service ready at {svc.url}: {client.models()}")
        world = ToyWorld(seed=seed)
        labels = class_labels()

        # text ↔ image retrieval on a few multi-object scenes
        scenes = list(world.samples(6, Split.TEST, Domain.PLAIN, start=10_000))
        img = client.embed_image([encode_png(s.image) for s in scenes])
        txt = client.embed_text([s.caption for s in scenes])
        click.echo(
            f"\nimage vectors {img.vectors.shape}, norms {np.linalg.norm(img.vectors, axis=1).round(4).tolist()}"
        )
        with EmbeddingGrpc(svc.grpc_target, api_key=settings.auth.key) as rpc:  # the same, over gRPC
            over_grpc = rpc.embed_text([s.caption for s in scenes])
        diff = float(np.abs(over_grpc.vectors - txt.vectors).max())
        click.echo(
            f"the captions over gRPC ({svc.grpc_target}): max |HTTP - gRPC| = {diff:.1e}, "
            f"version {over_grpc.versions[0]}"
        )
        sims = img.vectors @ txt.vectors.T
        click.echo("caption retrieval (each image against the 6 captions):")
        for i, s in enumerate(scenes):
            best = int(sims[i].argmax())
            mark = "ok " if best == i else "MISS"
            click.echo(f"  [{mark}] {s.caption!r:60} -> {scenes[best].caption!r}")

        # zero-shot classification of held-out single-object images
        held_out = list(world.samples(240, Split.TEST, Domain.PLAIN, n_objects=1))
        results: list[dict[str, object]] = []
        for start in range(0, len(held_out), 48):
            chunk = held_out[start : start + 48]
            results += client.classify([encode_png(s.image) for s in chunk], labels)
        correct = sum(r["top_label"] == s.label for r, s in zip(results, held_out, strict=True))
        click.echo("\nzero-shot classification (24 labels 'a {colour} {shape}'):")
        for r, s in list(zip(results, held_out, strict=True))[:5]:
            click.echo(f"  truth {s.label!r:22} predicted {r['top_label']!r:22} p={r['probs'][0]:.3f}")
        acc = correct / len(held_out)
        versions = sorted({str(r["version"]) for r in results})
        click.echo(f"zero-shot accuracy on {len(held_out)} held-out toy images: {acc:.1%} (model versions {versions})")
        client.close()
        with ServiceProcess(
            "search", env={**env, "VLMOPS_SEARCH__EMBEDDING_URL": svc.url}, log_path=log_path
        ) as search:
            p_at_10 = search_demo(SearchClient(search.url, api_key=settings.auth.key), world)
            gain = 1.0
            if finetune:
                worker_env = {**env, "VLMOPS_WORKER__SEARCH_URL": search.url, "VLMOPS_WORKER__EMBEDDING_URL": svc.url}
                jobs = settings.model_copy(
                    update={"worker": settings.worker.model_copy(update={"search_url": search.url})}
                )
                with WorkerProcess(env=worker_env, log_path=settings.home.resolve() / "demo-worker.log"):
                    gain = finetune_demo(jobs, SearchClient(search.url, api_key=settings.auth.key), seed)
    return acc, p_at_10, gain


DEMO_FINETUNE = FinetuneConfig(epochs=16, batch_size=64, lr=5e-3, lora_r=8, checkpoint_every=50)
HEADLINE = ("zero_shot_acc", "t2i_recall@5", "t2i_r_precision", "i2t_recall@1", "i2t_recall@5")


def finetune_demo(settings: Settings, search: SearchClient, seed: int = 0) -> float:
    """LoRA-finetune production on the shifted domain as a Celery job, score it against production,
    pass the gate, promote, reindex; returns the zero-shot accuracy gained on shifted held-out images."""
    store = RegistryStore.from_settings(settings)
    name = settings.embedding.model_name
    paths = demo_datasets(settings.home.resolve() / "demo-data", seed)
    collection = "demo-shifted"
    if any(c["name"] == collection for c in search.post("/collections/list")):
        search.post("/collections/delete", name=collection)
    search.post("/collections/create", name=collection)
    samples = list(ToyWorld(seed=seed).samples(240, Split.TEST, Domain.SHIFTED, n_objects=1, start=30_000))
    for start in range(0, len(samples), 60):
        items = [
            {"image": to_base64(encode_png(s.image)), "payload": {"label": s.label}}
            for s in samples[start : start + 60]
        ]
        search.post("/ingest", collection=collection, items=items)
    before_shifted = precision_at_10(search, collection)

    base = store.by_alias(name, PRODUCTION)
    click.echo(
        f"\nfinetuning {base.ref} with LoRA on 1200 pairs of the shifted domain (outlined shapes, striped noise) "
        "and 600 plain ones (replay, so it keeps what it knew), as a Celery job on the embedded broker ..."
    )
    task = make_app(settings).send_task(
        "vlmops.finetune",
        args=[base.ref, str(paths["train"])],
        kwargs={"config": DEMO_FINETUNE.model_dump(), "eval_dataset": str(paths["held-mixed"])},
    )
    out = follow(task, "finetuning", "step", timeout_s=1800)
    done = "trained" if out["resumed_from"] < out["steps"] else "found done by an earlier run"
    click.echo(
        f"{name} version {out['version']}: {out['steps']} steps {done}; {out['trainable_params']:,} trainable of "
        f"{out['total_params']:,} parameters; MLflow run {out['run_id']}"
    )
    candidate = store.get(name, out["version"])
    shown: dict[str, dict[str, EvalReport]] = {}
    for part in ("held-shifted", "held-plain"):
        data = load_pairs(paths[part])
        shown[part] = evaluate_versions(store, settings, [candidate, base], data)
        click.echo(f"\n{part} ({len(data)} held-out images), candidate against production:")
        click.echo(table(shown[part], HEADLINE))
    per_class = comparison(shown["held-shifted"], ("class_recall@10", "class_r_precision"))
    if per_class is not None:
        click.echo("\nper class on the shifted held-out set, class queries over every image (as ONiT's table):")
        click.echo(per_class.text())
    click.echo("\npromotion gate on the mixed held-out set:")
    event, verdict = gated_promote(
        store, settings, name, candidate.version, "demo: LoRA on the shifted domain", dataset=str(paths["held-mixed"])
    )
    if verdict is not None:
        click.echo(verdict.text())
    click.echo(f"{name}: production {event.previous} -> {event.version}")
    for row in follow_reindexes(make_app(settings), search, name, event.version, timeout_s=600):
        click.echo(f"  {row['name']}: {row['count']} items now embedded by version {row['version']}")
    after_shifted = precision_at_10(search, collection)
    click.echo(
        f"text -> image Precision@10 on {collection!r} (shifted images): {before_shifted:.3f} before, "
        f"{after_shifted:.3f} after"
    )
    click.echo(f"and on 'demo-toys' (plain images) after: {precision_at_10(search, 'demo-toys'):.3f}")
    after, before = (shown["held-shifted"][f"v{v.version}"].metrics["zero_shot_acc"] for v in (candidate, base))
    return after - before


def demo_datasets(folder: Path, seed: int = 0) -> dict[str, Path]:
    """The demo's pair datasets (written once): shifted + plain to train on, held-out sets per domain and mixed."""
    parts: dict[str, list[tuple[Domain, int, Split]]] = {
        "train": [(Domain.SHIFTED, 1200, Split.TRAIN), (Domain.PLAIN, 600, Split.TRAIN)],
        "held-shifted": [(Domain.SHIFTED, 240, Split.TEST)],
        "held-plain": [(Domain.PLAIN, 240, Split.TEST)],
        "held-mixed": [(Domain.SHIFTED, 240, Split.TEST), (Domain.PLAIN, 240, Split.TEST)],
    }
    paths = {}
    for part, pieces in parts.items():
        path = folder / part / "pairs.jsonl"
        if not path.is_file():
            for i, (domain, n, split) in enumerate(pieces):
                write_toy_dataset(path.parent, n, domain, split, seed, append=i > 0)
        paths[part] = path
    return paths


def precision_at_10(search: SearchClient, collection: str) -> float:
    """Mean Precision@10 of the 24 "a {colour} {shape}" text queries (payload ``label`` is the truth)."""
    precisions = []
    for label in class_labels():
        hits = search.post("/search", collection=collection, text=label, top_k=10)
        precisions.append(sum(h["payload"]["label"] == label for h in hits) / 10)
    return sum(precisions) / len(precisions)


def search_demo(search: SearchClient, world: ToyWorld, n: int = 300) -> float:
    """Ingest toy images into a collection, search it by text and by image; returns mean Precision@10."""
    name = "demo-toys"
    if any(c["name"] == name for c in search.post("/collections/list")):
        search.post("/collections/delete", name=name)
    search.post("/collections/create", name=name, keyword_fields=["shape"])
    samples = list(world.samples(n, Split.TEST, Domain.PLAIN, n_objects=1, start=20_000))
    for start in tqdm(range(0, n, 50), desc="ingesting toy images", unit="batch"):
        items = [
            {"image": to_base64(encode_png(s.image)), "payload": {"label": s.label, "shape": s.objects[0].shape}}
            for s in samples[start : start + 50]
        ]
        search.post("/ingest", collection=name, items=items)
    click.echo(f"\ncollection {name!r}: {n} images (Qdrant Edge, embedded)")
    for label in ("a red circle", "a blue star"):
        hits = search.post("/search", collection=name, text=label, top_k=10)
        shown = ", ".join(f"{h['payload']['label']} ({h['score']:.2f})" for h in hits[:5])
        click.echo(f"  text {label!r} -> {shown}  [version {hits[0]['version']}]")
    query = samples[7]
    hits = search.post("/search", collection=name, image=to_base64(encode_png(query.image)), top_k=3)
    click.echo(
        f"  image of {query.label!r} -> " + ", ".join(f"{h['payload']['label']} ({h['score']:.3f})" for h in hits)
    )
    p_at_10 = precision_at_10(search, name)
    click.echo(f"text -> image Precision@10 over the 24 labels: {p_at_10:.3f}")
    return p_at_10
