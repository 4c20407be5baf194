"""The ``vlmops`` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from infra.logs import configure_logging, new_request_id, reset_request_id, set_request_id
from infra.settings import Settings


def _settings() -> Settings:
    return Settings()


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="log at INFO level")
def main(verbose: bool) -> None:
    """vlmops: serve, track and promote vision-language models."""
    level = logging.INFO if verbose else logging.WARNING
    configure_logging(_settings().log_format, level=level, root_level=level)
    # one id for the command: on its log lines, its calls to the services, the jobs it enqueues
    token = set_request_id(new_request_id())
    click.get_current_context().call_on_close(lambda: reset_request_id(token))


@main.command("train-toy")
@click.option(
    "--task",
    type=click.Choice(["clip", "captioning", "vqa", "grounding"]),
    default="clip",
    show_default=True,
    help="the toy CLIP, or a task model started from it (GIT captioner, BLIP-VQA, OWL-ViT grounder)",
)
@click.option("--register/--no-register", default=True, help="register the result in the model registry")
@click.option("--promote", is_flag=True, help="promote the registered version to production")
@click.option("--seed", default=0, show_default=True)
@click.option("--force", is_flag=True, help="train again even when a trained toy model is cached")
def train_toy(task: str, register: bool, promote: bool, seed: int, force: bool) -> None:
    """Train a tiny model on the toy world (2–3 minutes each on 2 cores; cached under VLMOPS_HOME)."""
    from services.demo import ensure_toy_clip, register_toy

    settings = _settings()
    clip, metrics = ensure_toy_clip(settings, seed=seed, force=force and task == "clip")
    if task == "clip":
        click.echo(json.dumps(metrics, indent=2))
        if register:
            info = register_toy(settings, clip, metrics, seed=seed, promote=promote)
            click.echo(f"registered {info.name} version {info.version}{' (production)' if promote else ''}")
        return
    from registry.toy_tasks import ensure_toy_task, register_toy_task
    from services.demo_tasks import progress_bar, toy_clip_ref

    with progress_bar(f"training toy {task} model") as progress:
        model, figures = ensure_toy_task(settings, task, clip, seed=seed, force=force, progress=progress)
    click.echo(json.dumps(figures, indent=2))
    if register:
        info = register_toy_task(settings, task, model, figures, seed, promote, toy_clip_ref(settings, seed))
        click.echo(f"registered {info.name} version {info.version}{' (production)' if promote else ''}")


@main.group()
def models() -> None:
    """The model registry: register, list, promote, roll back."""


@models.command("register")
@click.argument("name")
@click.option(
    "--family",
    default="clip",
    show_default=True,
    help="clip, blip-caption, git-caption, blip-vqa, vilt-vqa, owlvit, owlv2",
)
@click.option(
    "--source",
    required=True,
    help="a directory (vlmops, open_clip local-dir or transformers save_pretrained), an open_clip architecture "
    "or a transformers model id",
)
@click.option("--pretrained", default=None, help="open_clip pretrained tag or weights file (with an architecture name)")
@click.option("--tag", "tags", multiple=True, help="KEY=VALUE, repeatable (e.g. dataset_hash=..., base_version=...)")
@click.option("--promote", is_flag=True)
def models_register(
    name: str, family: str, source: str, pretrained: str | None, tags: tuple[str, ...], promote: bool
) -> None:
    """Register a model version from a local directory or an open_clip name + pretrained tag."""
    from registry.families import ModelFamily, family_class
    from registry.families.clip import ClipModel
    from registry.families.hf import HFModel
    from registry.store import RegistryStore

    store = RegistryStore.from_settings(_settings())
    cls = family_class(family)
    path = Path(source)
    model: ModelFamily
    if cls is ClipModel and path.is_dir():
        model, origin = ClipModel.load(path), str(path.resolve())
    elif cls is ClipModel:
        model, origin = ClipModel.from_pretrained(source, pretrained), f"open_clip:{source}:{pretrained or 'random'}"
    elif issubclass(cls, HFModel):  # a save_pretrained directory or a transformers model id
        model, origin = cls.from_pretrained(source), str(path.resolve()) if path.is_dir() else source
    else:
        raise click.BadParameter(f"cannot register {family} from {source}", param_hint="--source")
    extra = dict(t.split("=", 1) for t in tags if "=" in t)
    info = store.register(name, model, tags={"source": origin, **extra})
    click.echo(f"registered {name} version {info.version}")
    if promote:
        store.promote(name, info.version, reason="registered with --promote")
        click.echo(f"promoted {name} version {info.version} to production")


@models.command("list")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
def models_list(name: str | None, as_json: bool) -> None:
    """List registered versions with their aliases and tags."""
    from registry.store import RegistryStore

    store = RegistryStore.from_settings(_settings())
    versions = store.versions(name)
    if as_json:
        click.echo(json.dumps([store.describe(v) for v in versions], indent=2))
        return
    click.echo(f"{'model':<24} {'version':>7}  {'aliases':<22} {'family':<6} {'architecture':<20} dim")
    for v in versions:
        click.echo(
            f"{v.name:<24} {v.version:>7}  {','.join(v.aliases):<22} {v.family:<6} "
            f"{v.tags.get('architecture', ''):<20} {v.tags.get('embed_dim', '')}"
        )


@models.command("promote")
@click.argument("name")
@click.argument("version")
@click.option("--reason", default="", help="recorded with the event")
@click.option("--force", is_flag=True, help="promote even when the gate refuses (the override is recorded)")
@click.option("--dataset", default=None, help="held-out pairs both are scored on (default: VLMOPS_GATE__DATASET)")
@click.option("--reindex/--no-reindex", default=True, help="ask the workers to reindex its collections now")
def models_promote(name: str, version: str, reason: str, force: bool, dataset: str | None, reindex: bool) -> None:
    """Point ``production`` at VERSION if it is not worse than production on the gate metrics.

    The collections of the model follow production by themselves (the workers' reconciler, within
    VLMOPS_WORKER__RECONCILE_INTERVAL_S); --reindex only makes that happen now."""
    from registry.gate import gated_promote
    from registry.store import RegistryStore

    settings = _settings()
    store = RegistryStore.from_settings(settings)
    event, verdict = gated_promote(store, settings, name, version, reason, force, dataset)
    if verdict is not None:
        click.echo(verdict.text())
    elif event.previous is not None:
        click.echo("gate not applied: --force")
    click.echo(f"{name}: production {event.previous or '-'} -> {event.version}{' (forced)' if event.forced else ''}")
    if reindex:
        _reconcile_now()


def _reconcile_now(wait_s: float = 15.0) -> None:
    """One reconcile pass on a worker now; prints the reindexes it enqueued."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    from workers.app import make_app

    task = make_app(_settings()).send_task("vlmops.reconcile")
    try:
        enqueued = task.get(timeout=wait_s)
    except CeleryTimeout:
        click.echo(
            f"reconcile requested ({task.id}); no worker answered within {wait_s:.0f} s: the collections follow "
            "production once one runs"
        )
        return
    for job in enqueued:
        click.echo(f"reindex of {job['collection']!r} to version {job['version']} enqueued: {job['task_id']}")
    if not enqueued:
        click.echo("no reindex enqueued now (collections in sync, or already being reindexed)")


@models.command("rollback")
@click.argument("name")
@click.option("--reason", default="", help="recorded with the event")
@click.option("--reindex/--no-reindex", default=True, help="ask the workers to reindex its collections now")
def models_rollback(name: str, reason: str, reindex: bool) -> None:
    """Move ``production`` back to the version before the last promotion."""
    from registry.store import RegistryStore

    event = RegistryStore.from_settings(_settings()).rollback(name, reason=reason)
    click.echo(f"{name}: production {event.previous} -> {event.version} (rolled back)")
    if reindex:
        _reconcile_now()


@main.command()
@click.argument("service", type=click.Choice(["embedding", "captioning", "vqa", "grounding", "search", "explorer"]))
@click.option("--port", default=3000, show_default=True)
@click.option("--grpc-port", type=int, default=None, help="default: VLMOPS_<SERVICE>__GRPC_PORT; 0: no gRPC")
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0: every address (needs API keys)")
def serve(service: str, port: int, grpc_port: int | None, host: str) -> None:
    """Start a service (``bentoml serve`` of its module) in the foreground: HTTP on PORT, gRPC on GRPC_PORT.

    On an address other than loopback it needs API keys (VLMOPS_AUTH__KEYS) or VLMOPS_AUTH__DISABLED=true."""
    from infra.process import grpc_port_variable, serve_command
    from services.guard import key_ring

    settings = _settings()
    key_ring(settings.auth, [host], service)  # refuse now, with the reason, rather than in each worker
    if grpc_port is not None:
        os.environ[grpc_port_variable(service)] = str(grpc_port)
        settings = _settings()
    rpc = getattr(getattr(settings, service), "grpc_port", 0)
    page = "/explorer/" if service == "explorer" else ""
    click.echo(f"{service}: http://{host}:{port}{page}" + (f"  grpc {host}:{rpc}" if rpc else "  (no gRPC)"), err=True)
    cmd = serve_command(service, port, host)
    os.execv(cmd[0], cmd)


@main.command()
@click.option("--services", default=None, help="comma-separated names; default: VLMOPS_UP_SERVICES")
@click.option("--port", default=3000, show_default=True, help="first port; services take consecutive ports")
@click.option("--grpc-port", default=50051, show_default=True, help="first gRPC port; consecutive too; 0: no gRPC")
@click.option("--worker/--no-worker", default=True, help="also run a Celery worker for the jobs")
def up(services: str | None, port: int, grpc_port: int, worker: bool) -> None:
    """Start the model services on this machine, each a real server process; Ctrl-C stops them all."""
    import signal
    import time

    from infra.process import NO_GRPC, SERVICES, ServiceProcess, WorkerProcess

    settings = _settings()
    names = [n.strip() for n in (services or settings.up_services).split(",") if n.strip()]
    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        raise click.BadParameter(f"unknown services {unknown} (known: {', '.join(SERVICES)})", param_hint="--services")
    home = settings.ensure_home().resolve()
    ports = {n: port + i for i, n in enumerate(names)}
    env = {"VLMOPS_HOME": str(home)}
    if "embedding" in ports:
        env["VLMOPS_SEARCH__EMBEDDING_URL"] = env["VLMOPS_WORKER__EMBEDDING_URL"] = (
            f"http://127.0.0.1:{ports['embedding']}"
        )
    if "search" in ports:
        env["VLMOPS_WORKER__SEARCH_URL"] = f"http://127.0.0.1:{ports['search']}"
    for name in ("search", "embedding", "captioning", "vqa", "grounding"):  # where the explorer finds them
        if name in ports:
            env[f"VLMOPS_EXPLORER__{name.upper()}_URL"] = f"http://127.0.0.1:{ports[name]}"
    procs = [
        ServiceProcess(
            n,
            port=ports[n],
            env=env,
            log_path=home / f"{n}.log",
            grpc_port=0 if n in NO_GRPC else grpc_port and grpc_port + i,
        )
        for i, n in enumerate(names)
    ]
    workers = []

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too, explicitly: a shell without job control starts background commands with SIGINT
    # ignored, and Python then installs no Ctrl-C handler of its own
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for proc in procs:
            proc.launch()
        if worker:
            workers.append(WorkerProcess(env=env, log_path=home / "worker.log").start())
            click.echo(f"{'worker':<11} celery (logs: {home / 'worker.log'})")
        for proc in procs:
            proc.wait_live()
            if proc.name == "explorer":
                click.echo(f"{'explorer':<11} {proc.url}/explorer/  (the web page; logs: {proc.log_path})")
                continue
            rpc = f"grpc {proc.grpc_target}" if proc.grpc_target else "no gRPC"
            click.echo(
                f"{proc.name:<11} {proc.url}  {rpc}  (logs: {proc.log_path}; ready once its model has a production "
                "version)"
            )
        while all(p.proc is not None and p.proc.poll() is None for p in procs):
            time.sleep(0.5)
        dead = [p.name for p in procs if p.proc is not None and p.proc.poll() is not None]
        click.echo(f"stopped: {', '.join(dead)} exited; stopping the rest", err=True)
    except KeyboardInterrupt:
        click.echo("stopping ...")
    finally:
        for proc in procs:
            proc.stop()
        for w in workers:
            w.stop()


@main.command()
@click.option("--loglevel", default="INFO", show_default=True)
@click.option(
    "--queues", default="celery,train", show_default=True, help="celery: reindex, ingest; train: finetune, eval"
)
def worker(loglevel: str, queues: str) -> None:
    """Run a Celery worker for the jobs on the configured broker (one job at a time)."""
    from workers.app import app

    set_request_id(None)  # each job the worker runs has its own
    quiet = ["--quiet"] if _settings().log_format == "json" else []  # no banner: every line a JSON object
    app.worker_main([*quiet, "worker", "-P", "solo", "-c", "1", "-Q", queues, f"--loglevel={loglevel}"])


@main.command()
@click.argument("collection")
@click.option("--version", default=None, help="default: production of the collection's model")
@click.option("--wait/--no-wait", default=True, help="follow the job with a progress bar")
@click.option(
    "--shadow",
    is_flag=True,
    help="build the collection by VERSION beside the live one and keep it, never swapped in: searchable by "
    "version (the explorer's side-by-side view) until promoted or dropped",
)
def reindex(collection: str, version: str | None, wait: bool, shadow: bool) -> None:
    """Re-embed COLLECTION with another model version as a Celery job; the alias swaps when it completes."""
    from workers.app import make_app

    if shadow and version is None:
        raise click.BadParameter("a shadow build needs the version to build", param_hint="--version")
    task = make_app(_settings()).send_task("vlmops.reindex", args=[collection, version], kwargs={"shadow": shadow})
    click.echo(f"job {task.id}")
    if not wait:
        return
    from workers.follow import follow

    out = follow(task, f"{'shadow build of' if shadow else 'reindexing'} {collection}")
    if out.get("shadow"):
        click.echo(f"{collection}: shadow of {out['count']} items by version {out['version']} ({out['physical']})")
    else:
        click.echo(f"{collection}: {out['count']} items now embedded by version {out['version']} ({out['physical']})")


@main.command()
@click.option("--seed", default=0, show_default=True)
@click.option("--finetune/--no-finetune", default=True, help="also finetune, gate, promote and reindex")
def demo(seed: int, finetune: bool) -> None:
    """Train (first run) or load the toy CLIP, register + promote it, serve it, use it over HTTP, then
    LoRA-finetune it on a shifted domain, pass the gate, promote and reindex."""
    from services.demo import run_demo

    sys.exit(run_demo(_settings(), seed=seed, finetune=finetune))


def _add_commands() -> None:
    from services.cli_data import collections, ingest, search
    from services.cli_keys import keys
    from services.cli_train import datasets, eval_cmd, finetune

    for command in (datasets, finetune, eval_cmd, keys, ingest, search, collections):
        main.add_command(command)


_add_commands()


def _handle_errors() -> None:
    from infra.errors import VlmopsError

    try:
        main(standalone_mode=False)
    except VlmopsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    _handle_errors()
