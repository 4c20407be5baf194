"""End to end: the bulk ingest job (a folder of images, read and embedded by a real Celery worker), the
reindex job, and online ingest over HTTP (a client's pages through the search and embedding services),
each against the raw in-process image embedding throughput of the same model.

Real processes (embedding service, search service, a worker on Redis (`--broker`; `embedded`: sqlite), Qdrant Edge,
sqlite catalog) on a real architecture with random weights; the images are JPEG-encoded toy images
in a folder. The raw rate is measured before the jobs and again after them, and the pipeline is
compared with their mean (the machines are shared: a single raw window can drift by a third). Each
job's figure excludes the worker's start-up and its first load of the version (a small job first).

``make bench`` runs it twice: ViT-B-32 on 256 items (the model is the bottleneck on CPUs) and the toy
CLIP on 20,000 items (about as fast as ViT-B-32 on a GPU: the platform's own cost shows, and a
rebuild whose paging grew with the collection would show it here). ``--n 100000`` and ``--n 10000``
compare the time per item at two sizes (linearity); ``--n 1000000`` is the big run (``--rss``: peak
resident memory of every process).
"""

from __future__ import annotations

import argparse
import json
import shutil
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


def peak_rss_mb(pid: int) -> float:
    """The peak resident set (VmHWM) of a live process and its children, in MiB."""
    total = 0.0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(c) for c in children.read_text().split()]
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) / 1024
    return total


def folder_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def cpu_s(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) each process and its children have used so far."""
    import psutil

    out = {}
    for name, pid in pids.items():
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        out[name] = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
    return out


def run_job(
    app: Any, name: str, args: list[Any], kwargs: dict[str, Any] | None = None, pids: dict[str, int] | None = None
) -> tuple[dict, float]:
    """The job's result and wall seconds; with ``pids``, each process's CPU seconds during it are printed."""
    before = cpu_s(pids or {})
    t0 = time.perf_counter()
    out = app.send_task(name, args=args, kwargs=kwargs or {}).get(timeout=6 * 3600)
    wall = time.perf_counter() - t0
    if pids:
        used = {k: v - before[k] for k, v in cpu_s(pids).items()}
        print(f"  {name}: {wall:.1f} s wall; CPU seconds " + ", ".join(f"{k} {v:.1f}" for k, v in used.items()))
    return out, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--n", type=int, default=256, help="images ingested by the bulk job, then reindexed")
    parser.add_argument("--batch", type=int, default=32, help="images per online ingest request")
    parser.add_argument("--http-n", type=int, default=5000, help="images ingested online over HTTP (at most n)")
    parser.add_argument("--page", type=int, default=1024, help="items per job page (VLMOPS_WORKER__PAGE_SIZE)")
    parser.add_argument("--embed", choices=["local", "service"], default="local", help="who embeds for the jobs")
    parser.add_argument("--rss", action="store_true", help="report every process's peak resident memory")
    parser.add_argument(
        "--broker",
        default="redis://127.0.0.1:6379/15",
        help="the jobs' broker (a deployment's Redis; 'embedded': the sqlite broker, which polls once a second)",
    )
    parser.add_argument(
        "--blobs",
        default=None,
        help="where the blob store and the images' folder live (default: in the run's home, on this machine's "
        "disk; /dev/shm: where creating a file costs what it costs on a volume or an object store, not the "
        "700 µs of CPU it costs on this VM's ext4)",
    )
    args = parser.parse_args()
    device = resolve_device("auto")
    model = ClipModel.from_pretrained(args.arch, device=device, seed=0)
    other = ClipModel.from_pretrained(args.arch, device=device, seed=1)
    if device == "cuda":
        model.configure_runtime("fp16")
    size = model.image_size
    samples = ToyWorld().samples(min(args.n, 4096), Split.TEST)
    sample = [jpeg(s.image.resize((size, size))) for s in samples]
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
        folder = (
            Path(tempfile.mkdtemp(prefix="vlmops-bench-images-", dir=args.blobs)) if args.blobs else home / "images"
        )
        t0 = time.perf_counter()
        for i, s in enumerate(ToyWorld().samples(args.n, Split.TEST)):
            sub = folder / f"{i // 1000:04d}"
            if i % 1000 == 0:
                sub.mkdir(parents=True, exist_ok=True)
            (sub / f"{i:07d}.jpg").write_bytes(jpeg(s.image.resize((size, size))))
        print(f"{args.n} images written to a folder in {time.perf_counter() - t0:.0f} s")
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
            "VLMOPS_SEARCH__INGEST_URI_PREFIXES": json.dumps([str(folder)]),
        }
        if args.broker != "embedded":  # a deployment's Redis, emptied of what an earlier run left
            import redis

            redis.Redis.from_url(args.broker).flushdb()
            env |= {"VLMOPS_BROKER_URL": args.broker, "VLMOPS_RESULT_BACKEND": args.broker}
        results["broker"] = args.broker
        blob_dir = (
            Path(tempfile.mkdtemp(prefix="vlmops-bench-blobs-", dir=args.blobs)) if args.blobs else home / "blobs"
        )
        env["VLMOPS_BLOB_ROOT"] = str(blob_dir)
        results["blobs"] = str(blob_dir.parent)
        with ServiceProcess("embedding", env=env, log_path=home / "embedding.log") as emb:
            env |= {"VLMOPS_SEARCH__EMBEDDING_URL": emb.url, "VLMOPS_WORKER__EMBEDDING_URL": emb.url}
            with ServiceProcess("search", env=env, log_path=home / "search.log") as search:
                env["VLMOPS_WORKER__SEARCH_URL"] = search.url
                http = httpx.Client(base_url=search.url, timeout=600)
                for name in ("online", "bench", "warm"):
                    http.post("/collections/create", json={"name": name}).raise_for_status()
                files = sorted(folder.rglob("*.jpg"))[: min(args.n, args.http_n)]
                t0 = time.perf_counter()
                for start in range(0, len(files), args.batch):
                    chunk = files[start : start + args.batch]
                    items = [
                        {"image": to_base64(f.read_bytes()), "payload": {"i": start + i}} for i, f in enumerate(chunk)
                    ]
                    http.post("/ingest", json={"collection": "online", "items": items}).raise_for_status()
                online = len(files) / (time.perf_counter() - t0)
                print(f"online ingest (HTTP pages of {args.batch}, {len(files)} images): {online:.1f} images/s")
                with WorkerProcess(env=env, log_path=home / "worker.log") as worker:
                    app = make_app(
                        Settings(
                            home=home,
                            broker_url=env.get("VLMOPS_BROKER_URL"),
                            result_backend=env.get("VLMOPS_RESULT_BACKEND"),
                        )
                    )
                    # a small job of each kind first: the worker boots and loads both versions once
                    t0 = time.perf_counter()
                    run_job(app, "vlmops.ingest", ["warm"], {"uris": [str(f) for f in files[:8]]})
                    run_job(app, "vlmops.reindex", ["warm", v2])
                    results["job_start_up_s"] = time.perf_counter() - t0
                    print(
                        f"first jobs (worker start-up, versions 1 and {v2} loaded): {results['job_start_up_s']:.1f} s"
                    )
                    _, results["job_fixed_s"] = run_job(app, "vlmops.reindex", ["warm", "1"])  # 8 items
                    print(f"a job's fixed cost (the same small reindex again): {results['job_fixed_s']:.2f} s")
                    pids = {"worker": worker.proc.pid, "search": search.proc.pid, "embedding": emb.proc.pid}
                    out, seconds = run_job(app, "vlmops.ingest", ["bench"], {"folder": str(folder)}, pids)
                    assert out["stored"] + out["skipped"] == args.n and out["rejected"] == 0, out
                    ingest = args.n / seconds
                    print(f"ingest job: {ingest:.1f} images/s ({ingest / raw_before:.2f} of raw before)")
                    out, seconds = run_job(app, "vlmops.reindex", ["bench", v2], pids=pids)
                    reindex = out["count"] / seconds
                    print(f"reindex job: {reindex:.1f} items/s ({reindex / raw_before:.2f} of raw before)")
                    if args.rss:
                        results["peak_rss_mb"] = {
                            "embedding service": peak_rss_mb(emb.proc.pid),
                            "search service": peak_rss_mb(search.proc.pid),
                            "worker": peak_rss_mb(worker.proc.pid),
                        }
                log = (home / "worker.log").read_text().splitlines()
                for line in [ln for ln in log if "for the bulk jobs" in ln]:
                    print(f"  worker: {line.split('] ', 1)[-1][:160]}")
                for line in [ln for ln in log if "succeeded in" in ln][-2:]:
                    print(f"  worker: {line.split('] ', 1)[-1][:160]}")
                for what, marker in (("ingest", "uris,"), ("reindex", "to version")):
                    lines = [ln for ln in log if marker in ln]
                    if lines:
                        print(f"  the {what} job's stages: {lines[-1].split('; ', 1)[-1][:300]}")
            results["index_mb"] = folder_size_mb(home / "index") if (home / "index").exists() else None
            results["blobs_mb"] = folder_size_mb(blob_dir) if blob_dir.exists() else None
            if args.blobs:
                shutil.rmtree(blob_dir, ignore_errors=True)
                shutil.rmtree(folder, ignore_errors=True)
    raw_after = raw_images_per_s(reference, sample, args.batch)
    raw = (raw_before + raw_after) / 2
    print(f"raw again: {raw_after:.1f} images/s; reference: their mean, {raw:.1f}")
    results |= {
        "raw_before": raw_before,
        "raw_after": raw_after,
        "raw": raw,
        "ingest": ingest,
        "reindex": reindex,
        "online_ingest": online,
        "ingest_over_raw": ingest / raw,
        "reindex_over_raw": reindex / raw,
        "online_ingest_over_raw": online / raw,
        "reindex_s_per_item": 1 / reindex,
        # per item once a job's fixed cost (dispatch, start, result) is taken out: what grows with n
        "reindex_marginal_s_per_item": (args.n / reindex - results["job_fixed_s"]) / args.n,
        "ingest_marginal_s_per_item": (args.n / ingest - results["job_fixed_s"]) / args.n,
    }
    print(f"\n{'stage':<34} {'items/s':>9} {'of raw':>7}")
    for name, value in (
        ("raw embedding (in process)", raw),
        ("ingest (bulk job, a folder)", ingest),
        ("reindex (Celery job)", reindex),
        ("online ingest (HTTP pages)", online),
    ):
        print(f"{name:<34} {value:>9.1f} {value / raw:>7.2f}")
    for what in ("ingest", "reindex"):
        print(f"{what}: {results[f'{what}_marginal_s_per_item'] * 1e6:.0f} µs an item besides the job's fixed cost")
    for key in ("index_mb", "blobs_mb"):
        if results[key] is not None:
            print(f"{key}: {results[key]:.0f} MiB")
    for proc, mb in results.get("peak_rss_mb", {}).items():
        print(f"peak RSS, {proc}: {mb:.0f} MiB")
    write_results(f"pipeline-{args.arch}-{args.n}-{device}-{args.embed}", results)


if __name__ == "__main__":
    main()
