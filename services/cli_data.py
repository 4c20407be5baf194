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

GRPC_HELP = "call the search service over gRPC at HOST:PORT (default: HTTP at VLMOPS_WORKER__SEARCH_URL)"


def image_files(paths: tuple[Path, ...]) -> list[Path]:
    return [f for p in paths for f in (sorted(p.rglob("*")) if p.is_dir() else [p]) if f.is_file()]


@click.command()
@click.argument("collection")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--create", is_flag=True, help="create the collection first")
@click.option("--batch", default=32, show_default=True)
@click.option("--grpc", "target", default=None, metavar="HOST:PORT", help=GRPC_HELP)
def ingest(collection: str, paths: tuple[Path, ...], create: bool, batch: int, target: str | None) -> None:
    """Ingest image files (or folders of them) into COLLECTION through the search service."""
    from tqdm import tqdm

    settings = Settings()
    files = image_files(paths)
    with tqdm(total=len(files), desc=f"ingesting into {collection}", unit="img") as bar:
        if target:
            from services.client import SearchGrpc

            def read() -> Iterator[tuple[bytes, dict[str, Any]]]:
                for f in files:  # one file in memory at a time, besides what gRPC has in flight
                    yield f.read_bytes(), {"file": f.name}
                    bar.update(1)

            with SearchGrpc(target, api_key=settings.auth.key) as grpc_search:
                if create:
                    grpc_search.create_collection(collection)
                count = grpc_search.ingest_stream(collection, read(), chunk=batch).count
        else:
            from infra.clients import search_client
            from infra.images import to_base64

            search = search_client(settings)
            if create:
                search.post("/collections/create", name=collection)
            count = 0
            for start in range(0, len(files), batch):
                chunk = files[start : start + batch]
                items = [{"image": to_base64(f.read_bytes()), "payload": {"file": f.name}} for f in chunk]
                count = search.post("/ingest", collection=collection, items=items)["count"]
                bar.update(len(chunk))
    click.echo(f"{collection}: {count} items")


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
