"""The task models in ``vlmops demo``: train (first run) or load the toy captioner, VQA model and grounder,
start the three services as real processes, and show what they say about a few toy images."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path

import click
from tqdm import tqdm

from infra.clients import TaskClient
from infra.images import encode_png
from infra.process import ServiceProcess
from infra.settings import Settings
from infra.toyworld import Domain
from registry import task_quality as Q
from registry.families.clip import ClipModel
from registry.families.grounding import DEFAULT_THRESHOLD
from registry.store import RegistryStore, VersionInfo
from registry.toy_tasks import TASKS, ensure_task_production, is_cached
from registry.toy_tasks.common import Progress

SERVICES = {"captioning": "/caption", "vqa": "/answer", "grounding": "/ground"}


@contextmanager
def progress_bar(desc: str) -> Iterator[Progress]:
    bar = tqdm(desc=desc, unit="step", mininterval=1.0)

    def progress(step: int, total: int, loss: float) -> None:
        bar.total = total
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    try:
        yield progress
    finally:
        bar.close()


def toy_clip_ref(settings: Settings, seed: int = 0) -> str:
    """The registered toy CLIP version a task model starts from (or its dataset hash, when not registered)."""
    from registry.toy_clip import ToyTrainConfig
    from services.demo import toy_dataset_hash

    toy_hash = toy_dataset_hash(ToyTrainConfig(seed=seed))
    store = RegistryStore.from_settings(settings)
    for info in store.versions(settings.embedding.model_name):
        if info.tags.get("dataset_hash") == toy_hash:
            return f"{info.ref} (toy CLIP, dataset {toy_hash})"
    return f"toy CLIP (dataset {toy_hash})"


def _production(settings: Settings, task: str, seed: int = 0) -> VersionInfo:
    """Production of the task's model is its toy model (trained on first use, about 2–3 minutes each)."""
    from services.demo import ensure_toy_clip

    def clip() -> tuple[ClipModel, str]:
        return ensure_toy_clip(settings, seed)[0], toy_clip_ref(settings, seed)

    return ensure_task_production(settings, task, clip, seed)


def serve_as_ready(
    settings: Settings,
    seed: int,
    training: subprocess.Popen[bytes] | None,
    start: Callable[[list[str]], None],
    poll_s: float = 1.0,
) -> dict[str, VersionInfo]:
    """Make each task's toy model production and ``start`` its service as soon as the model is trained: the
    grounder's while the captioner and the VQA model still train (``training``, :func:`start_training`), the
    captioner's while the VQA model does. Every model at once when nothing trains."""
    versions: dict[str, VersionInfo] = {}
    pending = list(TASKS)
    while pending:
        done = training is None or training.poll() is not None
        if training is not None and done and training.returncode != 0:
            raise click.ClickException(f"training the toy task models failed: see {settings.home}/demo-training.log")
        ready = [t for t in pending if done or is_cached(settings, t, seed)]
        if not ready:
            time.sleep(poll_s)
            continue
        for task in ready:
            info = versions[task] = _production(settings, task, seed)
            click.echo(f"registry: {info.name} version {info.version} is production ({info.family}, {task})")
        start(ready)
        pending = [t for t in pending if t not in ready]
    return versions


def _iou_of_label(client: TaskClient, example: Q.Example) -> tuple[str, float]:
    label, box = example.objects[0]
    (out,) = client.ground([encode_png(example.image)], [[label]], threshold=0.0)
    (best,) = Q.best_per_query([label], out["detections"])
    return label, Q.iou(best.box, box) if best.box is not None else 0.0


def task_demo(
    settings: Settings,
    env: dict[str, str],
    log_dir: Path,
    seed: int = 0,
    training: subprocess.Popen[bytes] | None = None,
) -> dict[str, float]:
    """Start the three services (each as soon as its model is trained, while ``training`` runs), print a table
    of a few toy images through them and the versions' held-out figures; returns the figures."""
    with ExitStack() as stack:
        procs: dict[str, ServiceProcess] = {}

        def start(tasks: list[str]) -> None:
            click.echo(f"starting the {', '.join(tasks)} service{'s' if len(tasks) > 1 else ''} (bentoml serve) ...")
            batch = [ServiceProcess(t, env=env, log_path=log_dir / f"demo-{t}.log") for t in tasks]
            ServiceProcess.start_together(batch)
            for task, svc in zip(tasks, batch, strict=True):
                stack.callback(svc.stop)
                procs[task] = svc

        versions = serve_as_ready(settings, seed, training, start)
        clients = {t: stack.enter_context(closing(TaskClient(procs[t].url, api_key=settings.auth.key))) for t in TASKS}
        examples = Q.held_out(2, 1, seed=seed) + Q.held_out(2, None, seed=seed)
        captions = Q.service_caption(clients["captioning"])([e.image for e in examples])
        head = f"{'true caption':<50} {'generated caption':<50} {'question':<30} {'answer (truth)':<18} grounding"
        click.echo("\n" + head)
        for example, caption in zip(examples, captions, strict=True):
            qa = example.qa[1] if len(example.qa) > 1 else example.qa[0]
            (answer,) = Q.service_answer(clients["vqa"])([example.image], [qa.question])
            label, iou = _iou_of_label(clients["grounding"], example)
            click.echo(
                f"{example.caption:<50} {caption:<50} {qa.question:<30} {answer + ' (' + qa.answer + ')':<18} "
                f"{label!r} IoU {iou:.2f}"
            )
    # the figures each version recorded when it was trained, 200 held-out images per set; the services give the
    # same (tests/services/test_task_models.py), and measuring them again here took the demo a minute
    figures = {
        k.removeprefix("metric."): float(v)
        for info in versions.values()
        for k, v in info.tags.items()
        if k.startswith(("metric.caption_", "metric.vqa_", "metric.grounding_"))
    }
    click.echo("\nheld-out toy images, 200 per set, recorded on each version (plain domain; shifted in brackets):")
    for key in sorted(k for k in figures if not k.endswith("_shifted")):
        shifted = figures.get(f"{key}_shifted")
        click.echo(f"  {key:<40} {figures[key]:.3f}" + (f"  ({shifted:.3f})" if shifted is not None else ""))
    return figures


def held_out_figures(clients: dict[str, TaskClient], n: int = 200, seed: int = 0) -> dict[str, float]:
    """The acceptance figures through running services: per set (single, multi) and domain."""
    out: dict[str, float] = {}
    for domain in Domain:
        for name, n_objects in (("single", 1), ("multi", None)):
            suffix = name if domain is Domain.PLAIN else f"{name}_shifted"
            examples = Q.held_out(n, n_objects, domain, seed)
            figures = Q.score_captions(Q.service_caption(clients["captioning"]), examples)
            figures |= Q.score_answers(Q.service_answer(clients["vqa"]), examples)
            figures |= Q.score_grounding(Q.service_ground(clients["grounding"]), examples, DEFAULT_THRESHOLD)
            out |= {f"{k}_{suffix}": v for k, v in figures.items()}
    return out


def prepare(home: Path, seed: int = 0, jobs: int = 1) -> None:
    """Train (or find cached) the toy CLIP and the three toy task models under ``home``; nothing is registered.
    The grounder first (the others start from its tower), then the rest, ``jobs`` processes at a time."""
    from registry.toy_tasks import ensure_toy_task, toy_task
    from services.demo import ensure_toy_clip

    settings = Settings(home=home)
    clip, _ = ensure_toy_clip(settings, seed)
    first = [t for t in TASKS if toy_task(t).init == "clip"]
    rest = [t for t in TASKS if t not in first]
    for task in first:
        ensure_toy_task(settings, task, clip, seed)
    children = [_child(home, seed, task) for task in rest[: max(0, jobs - 1)]]
    for task in rest[len(children) :]:
        ensure_toy_task(settings, task, clip, seed)
    failed = [" ".join(child.args[-2:]) for child in children if child.wait() != 0]
    if failed:
        raise RuntimeError(f"training the toy models failed: {', '.join(failed)} (see the log)")


def _child(home: Path, seed: int, task: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "services.demo_tasks", str(home), "--seed", str(seed), "--task", task]
    return subprocess.Popen(command, env=os.environ.copy())


def is_prepared(home: Path, seed: int = 0) -> bool:
    from registry.toy_tasks import is_cached
    from services.demo import is_toy_clip_cached

    settings = Settings(home=home)
    clip = is_toy_clip_cached(home / f"toy-clip-seed{seed}", seed)
    return clip and all(is_cached(settings, task, seed) for task in TASKS)


def start_training(home: Path, log: Path, seed: int = 0, jobs: int = 1) -> subprocess.Popen[bytes] | None:
    """:func:`prepare` in a background process, or None when every toy model is cached. Each of its processes
    computes on one thread: a single-threaded trainer keeps its speed beside other work (measured on 2 cores:
    the toy CLIP trains at 7.5 steps/s on one thread beside another trainer, and at 1 step/s on two threads
    beside one), and ``jobs`` of them train side by side."""
    if is_prepared(home, seed):
        return None
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "services.demo_tasks", str(home), "--seed", str(seed), "--jobs", str(jobs)]
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group, with the trainers it starts (``terminate_group``)
        )


def main(argv: list[str] | None = None) -> None:
    """``python -m services.demo_tasks HOME [--jobs N | --task T]``: what the test session and ``vlmops demo``
    start in the background."""
    parser = argparse.ArgumentParser(prog="python -m services.demo_tasks")
    parser.add_argument("home", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="task models trained side by side")
    parser.add_argument("--task", choices=TASKS, help="train this one only (its starting point must be cached)")
    args = parser.parse_args(argv)
    if args.task is None:
        prepare(args.home, args.seed, args.jobs)
        return
    from registry.toy_tasks import ensure_toy_task
    from services.demo import ensure_toy_clip

    settings = Settings(home=args.home)
    ensure_toy_task(settings, args.task, ensure_toy_clip(settings, args.seed)[0], args.seed)


if __name__ == "__main__":
    main()
