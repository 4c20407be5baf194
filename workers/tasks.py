"""Celery tasks: thin wrappers over library code, reporting progress through task state."""

from __future__ import annotations

import functools
from dataclasses import asdict
from typing import Any

from celery import Task

from infra.blobs import BlobStore
from infra.catalog_db import CatalogDB
from infra.clients import embedding_client, search_client
from infra.errors import InvalidInput
from infra.settings import Settings
from infra.uris import UriPolicy
from registry.store import PRODUCTION, RegistryStore
from workers.app import app
from workers.embedder import EmbedderCache
from workers.metrics import JobItems
from workers.pipelines.ingest import FileWork, PageEmbedder, ServiceEmbedder, run_ingest, walk
from workers.pipelines.reindex import remote, run_reindex
from workers.reconcile import reconciler, record_end, record_start

# the versions this worker process has loaded for reindex jobs (made on first use: settings are read then)
EMBEDDERS = EmbedderCache()


@app.task(bind=True, name="vlmops.reindex")
def reindex(
    self: Task, collection: str, version: str | None = None, replace: bool = False, shadow: bool = False
) -> dict[str, Any]:
    """Re-embed ``collection`` with ``version`` (default: production of its model) and swap it in.

    Its state is kept on the collection's job row in the catalog (running, failed with the error and
    when it is retried, succeeded), where the reconciler and ``vlmops collections`` read it.

    ``shadow``: build the collection by ``version`` beside the live one and keep it (searchable by version,
    for comparing versions before a promotion), never swapping it in; the job row is left to the
    reconciler's reindexes."""
    settings = Settings()
    search = search_client(settings)
    model = search.collection(collection)["model"]
    if version is None:
        version = RegistryStore.from_settings(settings).by_alias(model, PRODUCTION).version
    db = CatalogDB(settings.catalog_uri)
    if not shadow:
        record_start(db, collection, version, str(self.request.id))
    counted = JobItems(self.name, collection)

    def progress(done: int, stage: str) -> None:
        counted(done)
        meta = {"done": done, "total": counted.expected, "stage": stage, "version": version}
        self.update_state(state="PROGRESS", meta=meta)

    try:
        counted.expect(int(search.collection(collection)["count"]))
        if settings.worker.embed == "local":
            embed = EMBEDDERS.get(model, version)
        else:
            embed = remote(embedding_client(settings), version)
        result = run_reindex(
            collection,
            version,
            search,
            embed,
            BlobStore(settings.blob_uri),
            page_size=settings.worker.page_size,
            grace_s=settings.worker.grace_s,
            progress=progress,
            inflight=settings.worker.inflight_pages,
            replace=replace,
            swap=not shadow,
        )
    except Exception as exc:
        if not shadow:
            record_end(db, collection, f"{type(exc).__name__}: {exc}", settings.worker)
        raise
    else:
        if not shadow:
            record_end(db, collection, None, settings.worker)
    finally:
        counted.end()
        search.close()
        db.close()
    return asdict(result)


@app.task(name="vlmops.reconcile")
def reconcile() -> list[dict[str, Any]]:
    """One reconcile pass now (``vlmops models promote`` sends this); returns the reindexes it enqueued."""
    return [asdict(e) for e in reconciler(Settings(), app).run_once()]


@app.task(bind=True, name="vlmops.ingest")
def ingest(self: Task, collection: str, uris: list[str] | None = None, folder: str | None = None) -> dict[str, Any]:
    """Bulk ingest into ``collection`` of the images at ``uris``, or of every file under ``folder``: the
    worker reads them within the same rules as the search service (``VLMOPS_SEARCH__INGEST_URI_PREFIXES`` /
    ``_HOSTS``; every URI, or the folder, is checked before anything is read), embeds them with the
    collection's version(s) and writes them through the search service. Run again (a redelivery after a
    kill), it skips what is stored already."""
    if (uris is None) == (folder is None):
        raise InvalidInput("give exactly one of uris and folder")
    settings = Settings()
    policy = UriPolicy(settings.search.ingest_uri_prefixes, settings.search.ingest_uri_hosts)
    if folder is not None:
        policy.check(folder, "folder")
        total = sum(1 for _ in walk(folder))  # a listing, no reads: the progress bar's ETA
    else:
        for n, uri in enumerate(uris or []):
            policy.check(uri, f"uri {n}")
        total = len(uris or [])
    counted = JobItems(self.name, collection)

    def progress(done: int, stage: str) -> None:
        counted(done)
        self.update_state(state="PROGRESS", meta={"done": done, "total": total, "stage": stage})

    search = search_client(settings)
    try:
        model = search.collection(collection)["model"]
        limits = settings.search
        if settings.worker.embed == "local":
            embedder_for = functools.partial(EMBEDDERS.get, model)
        else:
            client = embedding_client(settings)

            def embedder_for(version: str) -> PageEmbedder:
                return ServiceEmbedder(
                    remote(client, version), version, limits.max_image_bytes, limits.max_image_pixels
                )

        files = FileWork(policy, limits.max_image_bytes, settings.blob_uri)
        try:
            result = run_ingest(
                collection,
                walk(folder) if folder is not None else uris or [],
                search,
                files,
                embedder_for,
                page_size=settings.worker.page_size,
                progress=progress,
                inflight=settings.worker.inflight_pages,
            )
        finally:
            files.close()
    finally:
        counted.end()
        search.close()
    return asdict(result)


@app.task(bind=True, name="vlmops.finetune")
def finetune(
    self: Task,
    base: str,
    dataset: str,
    config: dict[str, Any] | None = None,
    name: str | None = None,
    eval_dataset: str | None = None,
) -> dict[str, Any]:
    """LoRA (or full) finetune of the CLIP version ``base`` on ``dataset``; registers the result.

    Redelivered after a crash, it resumes from the job's last checkpoint (under VLMOPS_WORK_DIR)."""
    from registry.finetune import FinetuneConfig
    from registry.finetune_job import run_finetune_job

    def progress(step: int, total: int, loss: float) -> None:
        if step == total or step % 5 == 0:
            self.update_state(state="PROGRESS", meta={"done": step, "total": total, "loss": loss, "stage": "train"})

    cfg = FinetuneConfig.build(**(config or {}))
    return run_finetune_job(Settings(), base, dataset, cfg, name, eval_dataset, progress)


@app.task(bind=True, name="vlmops.evaluate")
def evaluate(self: Task, name: str, versions: list[str], dataset: str) -> dict[str, Any]:
    """Score versions of ``name`` on one held-out dataset; the figures are stored as version tags."""
    from registry.datasets import load_pairs
    from registry.gate import evaluate_versions

    settings = Settings()
    store = RegistryStore.from_settings(settings)
    data = load_pairs(dataset, require_captions=False, lazy=True)
    reports = evaluate_versions(store, settings, [store.resolve(f"{name}/{v}") for v in versions], data)
    return {label: r.metrics for label, r in reports.items()}
