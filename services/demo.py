"""``vlmops demo``: the main loop on the embedded defaults, with no server to install.

Train (first run) or load the toy CLIP, register and promote it in MLflow (sqlite), start the
embedding service as a real process, embed and classify toy images over HTTP, print the results.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict

import click
import numpy as np
from tqdm import tqdm

from infra.errors import ModelFormatError, NotFound
from infra.images import encode_png, to_base64
from infra.process import ServiceProcess
from infra.reindex import SearchAdmin
from infra.settings import Settings
from infra.toyworld import Domain, Split, ToyWorld, class_labels
from registry.families.clip import ClipModel
from registry.store import PRODUCTION, RegistryStore, VersionInfo
from registry.toy_clip import ToyTrainConfig, train_toy_clip
from services.client import EmbeddingClient

METRICS_FILE = "metrics.json"


def toy_dataset_hash(config: ToyTrainConfig) -> str:
    spec = {"world": asdict(ToyWorld(seed=config.seed)), "train": asdict(config)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def ensure_toy_clip(settings: Settings, seed: int = 0, force: bool = False) -> tuple[ClipModel, dict[str, float]]:
    """The trained toy CLIP, from the cache under VLMOPS_HOME or trained now (and cached)."""
    cache = settings.ensure_home() / f"toy-clip-seed{seed}"
    if not force and (cache / METRICS_FILE).is_file():
        try:
            return ClipModel.load(cache), json.loads((cache / METRICS_FILE).read_text())
        except (ModelFormatError, OSError, ValueError):
            pass  # a corrupt cache is trained again
    config = ToyTrainConfig(seed=seed)
    with tqdm(total=config.steps, desc="training toy CLIP", unit="step", mininterval=1.0) as bar:

        def progress(step: int, total: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

        model, metrics = train_toy_clip(config, progress)
    model.save(cache)
    (cache / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    return model, metrics


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
    store = RegistryStore.from_settings(settings)
    try:
        current = store.by_alias(settings.embedding.model_name, PRODUCTION)
        cfg = ToyTrainConfig(seed=seed)
        if current.tags.get("dataset_hash") == toy_dataset_hash(cfg):
            return current
    except NotFound:
        pass
    model, metrics = ensure_toy_clip(settings, seed)
    register_toy(settings, model, metrics, seed=seed, promote=True)
    return store.by_alias(settings.embedding.model_name, PRODUCTION)


def run_demo(settings: Settings, seed: int = 0) -> int:
    t0 = time.perf_counter()
    click.echo(f"VLMOPS_HOME={settings.home.resolve()}  registry={settings.tracking_uri}")
    info = ensure_production(settings, seed)
    click.echo(f"registry: {info.name} version {info.version} is production ({info.tags.get('architecture')})")
    log_path = settings.home.resolve() / "demo-embedding.log"
    env = {"VLMOPS_HOME": str(settings.home.resolve())}
    click.echo("starting the embedding service (bentoml serve) ...")
    with ServiceProcess("embedding", env=env, log_path=log_path) as svc:
        client = EmbeddingClient(svc.url)
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
            p_at_10 = search_demo(SearchAdmin(search.url), world)
    click.echo(f"\nservices stopped; demo took {time.perf_counter() - t0:.0f} s")
    return 0 if acc >= 0.9 and p_at_10 >= 0.9 else 1


def search_demo(search: SearchAdmin, world: ToyWorld, n: int = 300) -> float:
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
    precisions = []
    for label in class_labels():
        hits = search.post("/search", collection=name, text=label, top_k=10)
        precisions.append(sum(h["payload"]["label"] == label for h in hits) / 10)
        if label in ("a red circle", "a blue star"):
            shown = ", ".join(f"{h['payload']['label']} ({h['score']:.2f})" for h in hits[:5])
            click.echo(f"  text {label!r} -> {shown}  [version {hits[0]['version']}]")
    query = samples[7]
    hits = search.post("/search", collection=name, image=to_base64(encode_png(query.image)), top_k=3)
    click.echo(
        f"  image of {query.label!r} -> " + ", ".join(f"{h['payload']['label']} ({h['score']:.3f})" for h in hits)
    )
    p_at_10 = sum(precisions) / len(precisions)
    click.echo(f"text -> image Precision@10 over the 24 labels: {p_at_10:.3f}")
    return p_at_10
