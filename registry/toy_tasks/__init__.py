"""Tiny task models trained on the toy world (``vlmops train-toy --task ...``): a GIT captioner, a BLIP-VQA
and an OWL-ViT grounder, each starting from the trained toy CLIP, cached under ``VLMOPS_HOME`` and
registered with lineage tags and their held-out figures."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from infra.errors import ModelFormatError, NotFound
from infra.locks import file_lock
from infra.settings import Settings
from infra.threads import torch_threads
from infra.toyworld import ToyWorld
from registry.families import clip_convert, load_model
from registry.families.clip import ClipModel
from registry.families.clip_convert import Tensors
from registry.families.hf import HFModel
from registry.store import PRODUCTION, RegistryStore, VersionInfo
from registry.toy_tasks.common import Progress, TaskTrainConfig, bf16_matmuls

log = logging.getLogger(__name__)

TASKS = ("captioning", "vqa", "grounding")
VISION_TOWER = {"grounding": "owlvit.vision_model"}
METRICS_FILE = "metrics.json"
HASH_FILE = "dataset_hash"

Trainer = Callable[[ClipModel, TaskTrainConfig, Progress | None, Tensors | None], tuple[HFModel, dict[str, float]]]


@dataclass(frozen=True)
class ToyTask:
    """``init``: where the vision tower comes from, the toy CLIP (``clip``) or the toy grounder
    (``grounding``), whose tower learnt from boxes what each patch shows."""

    task: str
    family: str
    config: TaskTrainConfig
    trainer: Trainer
    init: str = "clip"

    def dataset_hash(self, seed: int) -> str:
        spec = {"world": asdict(ToyWorld(seed=seed)), "task": self.task, "train": asdict(self.config)}
        if self.config.bf16 and bf16_matmuls():  # trained under bf16 autocast: other weights than in fp32
            spec["autocast"] = "bf16"
        if self.init != "clip":
            spec["init"] = toy_task(self.init).dataset_hash(seed)
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def toy_task(task: str) -> ToyTask:
    match task:
        case "captioning":
            from registry.toy_tasks import captioning as m

            return ToyTask(task, "git-caption", m.CONFIG, m.train_captioner, m.INIT)
        case "vqa":
            from registry.toy_tasks import vqa as v

            return ToyTask(task, "blip-vqa", v.CONFIG, v.train_vqa, v.INIT)
        case "grounding":
            from registry.toy_tasks import grounding as g

            return ToyTask(task, "owlvit", g.CONFIG, g.train_grounder)
        case _:
            raise ValueError(f"unknown toy task {task!r} (known: {', '.join(TASKS)})")


def cache_dir(settings: Settings, task: str, seed: int, create: bool = True) -> Path:
    home = settings.ensure_home() if create else settings.home
    return home / f"toy-{task}-seed{seed}"


def ensure_toy_task(
    settings: Settings,
    task: str,
    clip: ClipModel,
    seed: int = 0,
    force: bool = False,
    progress: Progress | None = None,
) -> tuple[HFModel, dict[str, float]]:
    """The trained toy model of ``task``: from the cache under VLMOPS_HOME, or trained now (and cached) with
    its held-out figures. Another process training the same model is waited for."""
    spec = toy_task(task)
    tower = None
    if spec.init != "clip":
        base, _ = ensure_toy_task(settings, spec.init, clip, seed, progress=progress)
        tower = clip_convert.tower_state(base.model.get_submodule(VISION_TOWER[spec.init]))
    cache = cache_dir(settings, task, seed)
    with file_lock(cache.with_suffix(".lock")):
        return _toy_task(cache, spec, clip, seed, force, progress, tower)


def _toy_task(
    cache: Path,
    spec: ToyTask,
    clip: ClipModel,
    seed: int,
    force: bool,
    progress: Progress | None,
    tower: Tensors | None,
) -> tuple[HFModel, dict[str, float]]:
    from registry.task_eval import toy_figures

    task = spec.task
    wanted = spec.dataset_hash(seed)
    if not force and (cache / METRICS_FILE).is_file() and _cached_hash(cache) == wanted:
        try:
            model = load_model(cache)
            if isinstance(model, HFModel):
                return model, json.loads((cache / METRICS_FILE).read_text())
        except (ModelFormatError, OSError, ValueError):
            log.warning("the cached toy %s model in %s is unreadable: training again", task, cache)
    with torch_threads(spec.config.threads):  # the same weights on any machine (registry.toy_clip.TRAINING_THREADS)
        model, metrics = spec.trainer(clip, replace(spec.config, seed=seed), progress, tower)
        metrics |= toy_figures(model, seed=seed)
    model.save(cache)
    (cache / HASH_FILE).write_text(wanted)
    (cache / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    return model, metrics


def is_cached(settings: Settings, task: str, seed: int = 0) -> bool:
    """Whether the toy model of ``task`` is cached, trained by the current recipe."""
    cache = cache_dir(settings, task, seed, create=False)
    return (cache / METRICS_FILE).is_file() and _cached_hash(cache) == toy_task(task).dataset_hash(seed)


def _cached_hash(cache: Path) -> str | None:
    """The dataset hash (data, recipe, initialisation) the cached model was trained with: a cache of another
    recipe is trained again."""
    try:
        return (cache / HASH_FILE).read_text().strip()
    except OSError:
        return None


def model_name(settings: Settings, task: str) -> str:
    return str(getattr(settings, task).model_name)


def register_toy_task(
    settings: Settings,
    task: str,
    model: HFModel,
    metrics: dict[str, float],
    seed: int = 0,
    promote: bool = False,
    init_from: str = "the toy CLIP",
) -> VersionInfo:
    """Register a toy task model under the task's model name, with its lineage and figures."""
    store = RegistryStore.from_settings(settings)
    spec = toy_task(task)
    info = store.register(
        model_name(settings, task),
        model,
        tags={
            "dataset_hash": spec.dataset_hash(seed),
            "base_version": "none",
            "init_from": init_from,
            "task": task,
            "source": f"vlmops train-toy --task {task}",
        },
        metrics=metrics,
        description=f"tiny {spec.family} trained on the toy world ({task})",
    )
    if promote:
        store.promote(info.name, info.version, reason=f"toy {task} model registered by vlmops")
    return store.get(info.name, info.version)


def ensure_task_production(
    settings: Settings, task: str, clip: Callable[[], tuple[ClipModel, str]], seed: int = 0
) -> VersionInfo:
    """Production of the task's model is the toy model: kept if it is, else an earlier toy version is promoted
    again, else it is trained (or read from the cache) and registered. ``clip`` gives the toy CLIP and a
    description of it, only when training is needed."""
    store = RegistryStore.from_settings(settings)
    name = model_name(settings, task)
    toy_hash = toy_task(task).dataset_hash(seed)
    try:
        current = store.by_alias(name, PRODUCTION)
        if current.tags.get("dataset_hash") == toy_hash:
            return current
    except NotFound:
        pass
    earlier = [v for v in store.versions(name) if v.tags.get("dataset_hash") == toy_hash]
    if earlier:
        store.promote(name, earlier[0].version, reason=f"the toy {task} model")
        return store.by_alias(name, PRODUCTION)
    base, described = clip()
    model, metrics = ensure_toy_task(settings, task, base, seed)
    return register_toy_task(settings, task, model, metrics, seed, promote=True, init_from=described)
