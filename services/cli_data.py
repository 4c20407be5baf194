"""``vlmops ingest``, ``search`` and ``collections``: the search service's data, over HTTP (its URL,
``VLMOPS_WORKER__SEARCH_URL``) or, with ``--grpc HOST:PORT``, over gRPC; ``ingest --grpc`` streams every
file through one ``IngestStream`` (added to ``vlmops`` by ``services.cli``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from infra.settings import Settings

JOB_URIS = 100_000  # URIs in one ingest job at most (a longer list is sent as several jobs)
GRPC_HELP = "call the search service over gRPC at HOST:PORT (default: HTTP at VLMOPS_WORKER__SEARCH_URL)"


def image_files(paths: tuple[Path, ...]) -> list[Path]:
    return [f for p in paths for f in (sorted(p.rglob("*")) if p.is_dir() else [p]) if f.is_file()]


@click.command()
@click.argument("collection")
@click.argument("paths", nargs=-1)
@click.option("--create", is_flag=True, help="create the collection first")
@click.option("--batch", default=32, show_default=True)
@click.option("--grpc", "target", default=None, metavar="HOST:PORT", help=GRPC_HELP)
@click.option(
    "--job",
    is_flag=True,
    help="a Celery job on the worker pool reads PATHS (folders, files or URIs as the workers see them, within "
    "VLMOPS_SEARCH__INGEST_URI_PREFIXES / _HOSTS), embeds and writes them; resumable",
)
@click.option(
    "--uris",
    "uri_list",
    type=click.File("r"),
    default=None,
    help="a file of URIs, one a line ('-': standard input), ingested by a job (implies --job)",
)
@click.option("--wait/--no-wait", default=True, help="with --job: follow it with a progress bar")
def ingest(
    collection: str,
    paths: tuple[str, ...],
    create: bool,
    batch: int,
    target: str | None,
    job: bool,
    uri_list: Any,
    wait: bool,
) -> None:
    """Ingest image files (or folders of them) into COLLECTION: sent from here through the search service,
    or, with --job or --uris, read and embedded by the workers where the images live (big sets)."""
    settings = Settings()
    if create:
        _create(settings, collection, target)
    if job or uri_list is not None:
        uris = [line.strip() for line in uri_list if line.strip()] if uri_list is not None else []
        _ingest_job(settings, collection, [*paths, *uris], wait)
        return
    missing = [p for p in paths if not Path(p).exists()]
    if not paths or missing:
        raise click.BadParameter(f"no such files or folders: {missing}" if missing else "give files or folders")
    files = image_files(tuple(Path(p) for p in paths))
    from tqdm import tqdm

    with tqdm(total=len(files), desc=f"ingesting into {collection}", unit="img") as bar:
        if target:
            from services.client import SearchGrpc

            def read() -> Iterator[tuple[bytes, dict[str, Any]]]:
                for f in files:  # one file in memory at a time, besides what gRPC has in flight
                    yield f.read_bytes(), {"file": f.name}
                    bar.update(1)

            with SearchGrpc(target, api_key=settings.auth.key) as grpc_search:
                count = grpc_search.ingest_stream(collection, read(), chunk=batch).count
        else:
            from infra.clients import search_client
            from infra.images import to_base64

            search = search_client(settings)
            count = 0
            for start in range(0, len(files), batch):
                chunk = files[start : start + batch]
                items = [{"image": to_base64(f.read_bytes()), "payload": {"file": f.name}} for f in chunk]
                count = search.post("/ingest", collection=collection, items=items)["count"]
                bar.update(len(chunk))
    click.echo(f"{collection}: {count} items")


def _create(settings: Settings, collection: str, target: str | None) -> None:
    if target:
        from services.client import SearchGrpc

        with SearchGrpc(target, api_key=settings.auth.key) as grpc_search:
            grpc_search.create_collection(collection)
        return
    from infra.clients import search_client

    search_client(settings).post("/collections/create", name=collection)


def _ingest_job(settings: Settings, collection: str, sources: list[str], wait: bool) -> None:
    """One job per folder (the worker lists it as it goes), and one per ``JOB_URIS`` listed files and URIs."""
    from workers.app import make_app
    from workers.follow import follow

    if not sources:
        raise click.BadParameter("give folders, files or URIs (or --uris FILE)")
    app = make_app(settings)
    folders = [s for s in sources if s.endswith("/") or Path(s).is_dir()]
    files = [s for s in sources if s not in folders]
    tasks = [app.send_task("vlmops.ingest", args=[collection], kwargs={"folder": f}) for f in folders]
    for start in range(0, len(files), JOB_URIS):  # a job's message holds its list: bounded, as its memory is
        tasks.append(
            app.send_task("vlmops.ingest", args=[collection], kwargs={"uris": files[start : start + JOB_URIS]})
        )
    for task in tasks:
        click.echo(f"job {task.id}")
    if not wait:
        return
    failed = 0
    for task in tasks:
        out = follow(task, f"ingesting into {collection}", unit="img", done_key="ingested")
        click.echo(
            f"{collection}: {out['stored']} stored, {out['skipped']} already there, {out['rejected']} rejected; "
            f"{out['count']} items"
        )
        for error in out["errors"]:
            click.echo(f"  rejected {error['uri']}: {error['error']}", err=True)
        failed += out["rejected"]
    if failed:
        raise SystemExit(1)


@click.command()
@click.argument("collection")
@click.argument("query")
@click.option("--image", is_flag=True, help="QUERY is an image file")
@click.option("--top-k", default=10, show_default=True)
@click.option("--grpc", "target", default=None, metavar="HOST:PORT", help=GRPC_HELP)
def search(collection: str, query: str, image: bool, top_k: int, target: str | None) -> None:
    """Search COLLECTION by text (or by an image file with --image)."""
    settings = Settings()
    if target:
        from services.client import SearchGrpc

        with SearchGrpc(target, api_key=settings.auth.key) as grpc_search:
            by = {"image": Path(query).read_bytes()} if image else {"text": query}
            hits = [vars(h) for h in grpc_search.search(collection, top_k=top_k, **by)]  # type: ignore[arg-type]
    else:
        from infra.clients import search_client
        from infra.images import to_base64

        body = {"image": to_base64(Path(query).read_bytes())} if image else {"text": query}
        hits = search_client(settings).post("/search", collection=collection, top_k=top_k, **body)
    for h in hits:
        click.echo(f"{h['score']:.4f}  v{h['version']}  {h['id']}  {json.dumps(h['payload'])}  {h['blob_uri']}")


@click.command()
@click.option("--json", "as_json", is_flag=True)
def collections(as_json: bool) -> None:
    """The collections: model, live version, items, a running build, and the last reindex (failures too)."""
    from infra.clients import search_client

    rows = search_client(Settings()).collections()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'collection':<24} {'model':<20} {'version':>7} {'items':>8}  reindex")
    for r in rows:
        job = r.get("reindex") or {}
        state = job.get("state", "-")
        if state in ("queued", "running"):
            state = f"{state} to v{job['version']} ({job['task_id']})"
        elif state == "failed":
            wait = max(0.0, (job.get("next_attempt_at") or 0) - time.time())
            state = f"FAILED x{job['failures']} to v{job['version']}, retry in {wait:.0f} s: {job.get('error')}"
        elif state == "succeeded":
            state = f"done (v{job['version']})"
        click.echo(f"{r['name']:<24} {r['model']:<20} {r['version']:>7} {r['count']:>8}  {state}")
