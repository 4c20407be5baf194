"""End to end: ingest throughput through the search service, and reindex throughput through a real
Celery worker, each against the raw in-process image embedding throughput of the same model.

Real processes (embedding service, search service, worker on the embedded broker, Qdrant Edge,
sqlite catalog) on a real architecture with random weights; the images are JPEG-encoded toy images.
The raw rate is measured before the ingest and again after the reindex, and the pipeline is compared
with their mean (the machines are shared: a single raw window can drift by a third).

``make bench`` runs it twice: ViT-B-32 on 256 items (the model is the bottleneck on CPUs) and the toy
CLIP on 20,000 items (about as fast as ViT-B-32 on a GPU: the platform's own cost shows, and a
rebuild whose paging grew with the collection would show it here).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.embedding import jpeg, write_results
from infra.images import to_base64
from infra.process import ServiceProcess, WorkerProcess
from infra.settings import Settings, resolve_device
from infra.toyworld import Split, ToyWorld
from registry.families.clip import ClipModel
from registry.store import RegistryStore
from workers.app import make_app

MODEL = "bench-clip"


def raw_images_per_s(model: ClipModel, blobs: list[bytes], batch: int) -> float:
    """Decode + preprocess + forward in process, batch by batch (what the services do for each item)."""
    from infra.images import decode_image

    def run() -> None:
        for start in range(0, len(blobs), batch):
            images = [decode_image(b, max_bytes=1 << 24, max_pixels=1 << 26) for b in blobs[start : start + batch]]
            model.encode_images(images)

    run()  # warm-up
    t0 = time.perf_counter()
    run()
    return len(blobs) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--n", type=int, default=256, help="images ingested, then reindexed")
    parser.add_argument("--batch", type=int, default=32, help="images per ingest request")
    parser.add_argument("--page", type=int, default=1024, help="items per reindex page (VLMOPS_WORKER__PAGE_SIZE)")
    parser.add_argument("--embed", choices=["local", "service"], default="local", help="who embeds for the reindex")
    args = parser.parse_args()
    device = resolve_device("auto")
    model = ClipModel.from_pretrained(args.arch, device=device, seed=0)
    other = ClipModel.from_pretrained(args.arch, device=device, seed=1)
    if device == "cuda":
        model.configure_runtime("fp16")
    size = model.image_size
    blobs = [jpeg(s.image.resize((size, size))) for s in ToyWorld().samples(args.n, Split.TEST)]
    sample = blobs[: min(len(blobs), 4096)]
    raw_before = raw_images_per_s(model, sample, args.batch)
    print(f"raw: {raw_before:.1f} images/s (decode + preprocess + forward, batch {args.batch}, {device})")
    results: dict[str, Any] = {
        "arch": args.arch,
        "device": device,
        "n": args.n,
        "batch": args.batch,
        "page": args.page,
        "embed": args.embed,
    }
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        store = RegistryStore.from_settings(Settings(home=home))
        store.promote(MODEL, store.register(MODEL, model).version)
        v2 = store.register(MODEL, other).version
        reference = model
        del other
        env = {
            "VLMOPS_HOME": str(home),
            "VLMOPS_EMBEDDING__MODEL_NAME": MODEL,
            "VLMOPS_SEARCH__DEFAULT_MODEL": MODEL,
            "VLMOPS_EMBEDDING__MAX_BATCH_SIZE": str(args.batch),
            "VLMOPS_EMBEDDING__MAX_LATENCY_MS": "60000",
            "VLMOPS_WORKER__PAGE_SIZE": str(args.page),
            "VLMOPS_WORKER__EMBED": args.embed,
            "VLMOPS_WORKER__RECONCILE": "false",  # the job below targets a version that is not production
        }
        with ServiceProcess("embedding", env=env, log_path=home / "embedding.log") as emb:
            env |= {"VLMOPS_SEARCH__EMBEDDING_URL": emb.url, "VLMOPS_WORKER__EMBEDDING_URL": emb.url}
            with ServiceProcess("search", env=env, log_path=home / "search.log") as search:
                env["VLMOPS_WORKER__SEARCH_URL"] = search.url
                http = httpx.Client(base_url=search.url, timeout=600)
                http.post("/collections/create", json={"name": "bench"}).raise_for_status()
                t0 = time.perf_counter()
                for start in range(0, args.n, args.batch):
                    items = [
                        {"image": to_base64(b), "payload": {"i": start + i}}
                        for i, b in enumerate(blobs[start : start + args.batch])
                    ]
                    http.post("/ingest", json={"collection": "bench", "items": items}).raise_for_status()
                ingest = args.n / (time.perf_counter() - t0)
                print(f"ingest end to end: {ingest:.1f} images/s ({ingest / raw_before:.2f} of raw before)")
                # a small collection first: the worker boots and loads version v2 (the start-up is reported
                # apart; a big rebuild pays it once), then the timed rebuild
                http.post("/collections/create", json={"name": "warm"}).raise_for_status()
                warm_items = [{"image": to_base64(b), "payload": {}} for b in blobs[:8]]
                http.post("/ingest", json={"collection": "warm", "items": warm_items}).raise_for_status()
                with WorkerProcess(env=env, log_path=home / "worker.log"):
                    app = make_app(Settings(home=home))
                    t0 = time.perf_counter()
                    app.send_task("vlmops.reindex", args=["warm", v2]).get(timeout=600)
                    results["job_start_up_s"] = time.perf_counter() - t0
                    print(f"first job (worker start-up, version {v2} loaded): {results['job_start_up_s']:.1f} s")
                    t0 = time.perf_counter()
                    out = app.send_task("vlmops.reindex", args=["bench", v2]).get(timeout=3600)
                    reindex = out["count"] / (time.perf_counter() - t0)
                print(f"reindex job: {reindex:.1f} items/s ({reindex / raw_before:.2f} of raw before)")
                stages = [ln for ln in (home / "worker.log").read_text().splitlines() if "to version" in ln]
                if stages:
                    print(f"  the job's stages: {stages[-1].split('items; ', 1)[-1][:300]}")
    raw_after = raw_images_per_s(reference, sample, args.batch)
    raw = (raw_before + raw_after) / 2
    print(f"raw again: {raw_after:.1f} images/s; reference: their mean, {raw:.1f}")
    results |= {
        "raw_before": raw_before,
        "raw_after": raw_after,
        "raw": raw,
        "ingest": ingest,
        "reindex": reindex,
        "ingest_over_raw": ingest / raw,
        "reindex_over_raw": reindex / raw,
    }
    print(f"\n{'stage':<28} {'items/s':>9} {'of raw':>7}")
    for name, value in (
        ("raw embedding (in process)", raw),
        ("ingest (HTTP, end to end)", ingest),
        ("reindex (Celery job)", reindex),
    ):
        print(f"{name:<28} {value:>9.1f} {value / raw:>7.2f}")
    write_results(f"pipeline-{args.arch}-{args.n}-{device}-{args.embed}", results)


if __name__ == "__main__":
    main()
