"""gRPC against HTTP on the same embedding service process and model, side by side in one run (``make bench``):

1. texts/s and images/s (JPEG) under 1, 8 and 32 concurrent single-item closed-loop clients: HTTP
   (``bench.loadgen``: POST /embed_text, /embed_image) against gRPC (EmbedText, EmbedImage with one item);
2. p50 and p99 latency of texts at 1 client, both protocols;
3. bulk: one EmbedTextStream call carrying 10,000 texts against the raw batched forward of the same model
   in this process (``encode_text`` on batches of the service's ``max_batch_size``).

Every figure is read from interleaved windows (HTTP, gRPC, HTTP, ..., HTTP; raw, stream, raw, ..., raw):
each gRPC window against the mean of the windows either side of it, and the median of those ratios
(:func:`bench.embedding.interleaved`), since these shared 2-core machines drift by tens of percent within
minutes. Each window also records the CPU its client (this process) and the service (its process tree)
spent per request, which is where the time goes on a machine this small.

    python -m bench.grpc_vs_http [--arch ViT-B-32] [--seconds 3]

The default architecture is the toy CLIP: fast enough that the protocol's own costs show (with ViT-B-32
on a CPU the model is the bottleneck and both protocols read the same). Random weights. Prints a table
with the goals (PASS/FAIL) and writes JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import torch

from bench.embedding import QUERIES, interleaved, interleaved_kinds, jpeg, write_results
from bench.grpcload import (
    CALL_TIMEOUT_S,
    DEFAULT_CHANNELS,
    METHODS,
    Window,
    client_ceiling,
    grpc_load,
    stream_once,
)
from bench.loadgen import load
from infra.images import to_base64
from infra.process import ServiceProcess
from infra.settings import Settings
from infra.toyworld import Split, ToyWorld
from registry.families.clip import ClipModel
from registry.store import RegistryStore
from services.client import EmbeddingGrpc
from services.proto.vlmops.v1 import embedding_pb2

MODEL = "bench-clip"


def tree_cpu_s(proc: psutil.Process) -> float:
    """User + system CPU seconds of ``proc`` and its live descendants (BentoML's arbiter and workers)."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


BATCH_METRICS = re.compile(
    r'^(vlmops_batch_size|vlmops_model_seconds)_(sum|count)\{[^}]*operation="(\w+)"[^}]*\} (\S+)$'
)


def batch_totals(url: str, operation: str) -> dict[str, float]:
    """The service's running totals of batches of ``operation`` (its /metrics): items, batches, model seconds."""
    out = {"vlmops_batch_size_sum": 0.0, "vlmops_batch_size_count": 0.0, "vlmops_model_seconds_sum": 0.0}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        m = BATCH_METRICS.match(line)
        if m and m[3] == operation and f"{m[1]}_{m[2]}" in out:
            out[f"{m[1]}_{m[2]}"] += float(m[4])
    return out


def with_cpu(
    run: Callable[[], dict[str, Any]], server: psutil.Process, url: str | None = None, operation: str = ""
) -> dict[str, Any]:
    """``run()``'s figures plus the CPU per request of the client (this process, grpc's threads included)
    and of the service (warm-up and connecting included, so a little high for both); with ``url``, the
    mean size of the batches the model ran for ``operation`` and their time in the model thread."""
    before = batch_totals(url, operation) if url else {}
    c0, s0, t0 = time.process_time(), tree_cpu_s(server), time.perf_counter()
    out = run()
    client, service, wall = time.process_time() - c0, tree_cpu_s(server) - s0, time.perf_counter() - t0
    n = max(1, out["requests"])
    out |= {
        "client_cpu_us": client / n * 1e6,
        "server_cpu_us": service / n * 1e6,
        "client_cores": client / wall,
        "server_cores": service / wall,
    }
    if url:
        after = batch_totals(url, operation)
        d = {k: after[k] - before[k] for k in after}
        batches = max(1.0, d["vlmops_batch_size_count"])
        out["mean_batch"] = d["vlmops_batch_size_sum"] / batches
        out["model_ms_per_batch"] = d["vlmops_model_seconds_sum"] / batches * 1000
    return out


# ---------------------------------------------------------------------------------------------- targets 1, 2
def protocols(
    svc: ServiceProcess,
    server: psutil.Process,
    clients: list[int],
    seconds: float,
    rounds: int,
    channels: int,
    http_p: dict[str, list[Any]],
    grpc_p: dict[str, list[bytes]],
) -> dict[str, Any]:
    """Targets 1 and 2: for each client count, texts then images, HTTP and gRPC windows interleaved."""
    out: dict[str, Any] = {}
    for c in clients:
        for kind, route, window in interleaved_kinds(seconds):

            def http(rt: str = route, k: str = kind, w: float = window, n: int = c) -> dict[str, Any]:
                return load(svc.url, rt, http_p[k], n, w)

            def rpc(k: str = kind, w: float = window, n: int = c) -> dict[str, Any]:
                return grpc_load(svc.grpc_target, METHODS[k], grpc_p[k], n, w, channels)

            op = route.lstrip("/")
            out[f"{kind}_c{c}"] = r = side_by_side(http, rpc, rounds, lambda f, o=op: with_cpu(f, server, svc.url, o))
            h, g = r["http_windows"], r["grpc_windows"]
            pairs = ", ".join(
                f"{s:.0f}/{(a + b) / 2:.0f}" for s, a, b in zip(r["served"], r["raw"], r["raw"][1:], strict=False)
            )
            print(
                f"  {kind} x{c}: gRPC/HTTP {pairs} -> {r['ratio']:.2f}; p50 ms HTTP {median(h, 'p50_ms'):.2f} "
                f"gRPC {median(g, 'p50_ms'):.2f}; CPU us/request client HTTP {median(h, 'client_cpu_us'):.0f} "
                f"gRPC {median(g, 'client_cpu_us'):.0f}, server HTTP {median(h, 'server_cpu_us'):.0f} "
                f"gRPC {median(g, 'server_cpu_us'):.0f}; mean batch HTTP {median(h, 'mean_batch'):.1f} "
                f"gRPC {median(g, 'mean_batch'):.1f}, model ms per batch HTTP {median(h, 'model_ms_per_batch'):.1f} "
                f"gRPC {median(g, 'model_ms_per_batch'):.1f}",
                flush=True,
            )
    return out


def side_by_side(
    http: Window, rpc: Window, rounds: int, measured: Callable[[Window], dict[str, Any]]
) -> dict[str, Any]:
    """:func:`bench.embedding.interleaved` of the two (HTTP the reference), every window's figures kept
    (``measured(window)``: its figures, and the CPU and batches around it)."""
    windows: dict[str, list[dict[str, Any]]] = {"http": [], "grpc": []}

    def rate(name: str, run: Window) -> float:
        windows[name].append(r := measured(run))
        return float(r["requests_per_s"])

    r = interleaved(lambda: rate("http", http), lambda: rate("grpc", rpc), rounds)
    r |= {"http_windows": windows["http"], "grpc_windows": windows["grpc"]}
    r["p50_ratio"] = interleaved_ratio([w["p50_ms"] for w in windows["http"]], [w["p50_ms"] for w in windows["grpc"]])
    return r


def interleaved_ratio(refs: list[float], served: list[float]) -> float:
    """:func:`bench.embedding.interleaved`'s ratio of figures already measured in that order."""
    return statistics.median(s / ((a + b) / 2) for s, a, b in zip(served, refs, refs[1:], strict=False))


def median(windows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(w[key] for w in windows))


# ---------------------------------------------------------------------------------------------- target 3
def raw_texts_per_s(model: ClipModel, texts: list[str], batch: int) -> float:
    """``encode_text`` (tokenize + forward) on batches of ``batch``, in this process."""
    t0 = time.perf_counter()
    for start in range(0, len(texts), batch):
        model.encode_text(texts[start : start + batch])
    return len(texts) / (time.perf_counter() - t0)


def check_answers(svc: ServiceProcess, model: ClipModel, texts: list[str], batch: int) -> dict[str, Any]:
    """The stream answers every text in order with the model's own vectors; one text answers the same over
    both protocols. Through the typed client (``services.client``), which parses every chunk."""
    with EmbeddingGrpc(svc.grpc_target, timeout_s=CALL_TIMEOUT_S) as emb:
        chunks = list(emb.embed_text_stream(texts))
        one = emb.embed_text(texts[:1]).vectors[0]
    got = np.concatenate([c.vectors for c in chunks])
    want = np.concatenate(
        [model.encode_text(texts[s : s + batch])[0].cpu().numpy() for s in range(0, len(texts), batch)]
    )
    if got.shape != want.shape:
        raise RuntimeError(f"EmbedTextStream answered {got.shape}, expected {want.shape}")
    cosine = float(np.min(np.sum(got * want, axis=1)))
    if cosine < 0.99:
        raise RuntimeError(f"EmbedTextStream's vectors are not the model's (lowest cosine {cosine:.3f})")
    answer = httpx.post(f"{svc.url}/embed_text", json={"items": [{"text": texts[0]}]}, timeout=CALL_TIMEOUT_S)
    answer.raise_for_status()
    over_http = np.asarray(answer.json()[0]["vector"], dtype=np.float32)
    return {
        "stream_chunks": len(chunks),
        "stream_lowest_cosine_to_raw": cosine,
        "grpc_http_max_abs_diff": float(np.max(np.abs(one - over_http))),
    }


def bulk(
    svc: ServiceProcess, model: ClipModel, n: int, batch: int, rounds: int, server: psutil.Process
) -> dict[str, Any]:
    """Target 3: raw, stream, raw, ..., raw over the same ``n`` texts."""
    texts = [f"{QUERIES[i % len(QUERIES)]} number {i}" for i in range(n)]
    request = embedding_pb2.EmbedTextRequest(items=[embedding_pb2.TextItem(text=t) for t in texts]).SerializeToString()
    checks = check_answers(svc, model, texts, batch)  # also the warm-up of both sides
    streams: list[dict[str, Any]] = []

    def stream() -> float:
        s0 = tree_cpu_s(server)
        streams.append(r := stream_once(svc.grpc_target, request))
        r["server_cpu_us_per_item"] = (tree_cpu_s(server) - s0) / n * 1e6
        return n / float(r["seconds"])

    raw_texts_per_s(model, texts[: batch * 4], batch)  # warm-up
    out = interleaved(lambda: raw_texts_per_s(model, texts, batch), stream, rounds)
    out |= {"items": n, "batch": batch, "request_bytes": len(request), "streams": streams, "checks": checks}
    pairs = ", ".join(
        f"{s:.0f}/{(a + b) / 2:.0f}" for s, a, b in zip(out["served"], out["raw"], out["raw"][1:], strict=False)
    )
    print(f"  stream of {n} texts / raw batch {batch}, texts/s, interleaved: {pairs} -> {out['ratio']:.2f}", flush=True)
    return out


# ---------------------------------------------------------------------------------------------- client ceiling
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vlmops-toy-clip", help="vlmops-toy-clip (default) or ViT-B-32, ...")
    parser.add_argument("--seconds", type=float, default=3.0, help="window length (images: three times this)")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=3, help="gRPC (or stream) windows between HTTP (or raw) ones")
    parser.add_argument("--channels", type=int, default=DEFAULT_CHANNELS, help="gRPC channels the clients share")
    parser.add_argument("--batch", type=int, default=64, help="the service's max_batch_size, and the raw batch")
    parser.add_argument("--stream-items", type=int, default=10_000)
    # One intra-op thread for the service's model and the raw forward alike: the client needs the other
    # core, and with 2 threads on 2 cores any other busy process (the client, a neighbour) stalls the
    # threads' barriers: the toy CLIP ran 230-330 texts/s instead of 2,500-3,600 here.
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="intra-op threads of the service's model and of the raw forward (0: torch's default)",
    )
    args = parser.parse_args()
    run(args)


def run(args: argparse.Namespace) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    clients = [int(c) for c in args.clients.split(",")]
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    model = ClipModel.from_pretrained(args.arch, pretrained=None, device=device, seed=0)
    if device == "cuda":
        model.configure_runtime("fp16")  # what the service runs (precision auto)
    images = [s.image.resize((model.image_size, model.image_size)) for s in ToyWorld().samples(64, Split.TEST)]
    jpegs = [jpeg(im) for im in images]
    http_p = {
        "texts": [{"items": [{"text": q}]} for q in QUERIES],
        "images": [{"items": [{"image": to_base64(b)}]} for b in jpegs],
    }
    grpc_p = {
        "texts": [
            embedding_pb2.EmbedTextRequest(items=[embedding_pb2.TextItem(text=q)]).SerializeToString() for q in QUERIES
        ],
        "images": [
            embedding_pb2.EmbedImageRequest(items=[embedding_pb2.ImageItem(image=b)]).SerializeToString() for b in jpegs
        ],
    }
    results: dict[str, Any] = {
        "arch": args.arch,
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "cpus": psutil.cpu_count(),
        "machine": platform.machine(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "channels": args.channels,
        "batch": args.batch,
    }
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        store = RegistryStore.from_settings(Settings(home=home))
        store.promote(MODEL, store.register(MODEL, model).version)
        env = {
            "VLMOPS_HOME": str(home),
            "VLMOPS_EMBEDDING__MODEL_NAME": MODEL,
            "VLMOPS_EMBEDDING__MAX_BATCH_SIZE": str(args.batch),
            "VLMOPS_EMBEDDING__MAX_LATENCY_MS": "20000" if device == "cpu" else "1000",
        }
        if args.torch_threads:
            env["VLMOPS_EMBEDDING__TORCH_THREADS"] = str(args.torch_threads)
        with ServiceProcess("embedding", env=env, log_path=home / "service.log") as svc:
            assert svc.proc is not None
            server = psutil.Process(svc.proc.pid)
            results["bulk"] = bulk(svc, model, args.stream_items, args.batch, args.rounds, server)
            results["protocols"] = protocols(
                svc, server, clients, args.seconds, args.rounds, args.channels, http_p, grpc_p
            )
    dim = model.embed_dim
    results["client_ceiling"] = client_ceiling(grpc_p["texts"], dim, clients[-1], args.seconds, args.channels)
    report(results, clients)


def report(results: dict[str, Any], clients: list[int]) -> None:
    p, bulk_r, top = results["protocols"], results["bulk"], clients[-1]
    print(
        f"\ngRPC vs HTTP, embedding service — {results['arch']} random weights on {results['device']} "
        f"({results['torch_threads']} torch thread(s), {results['cpus']} CPUs)\nrates: medians of the windows; "
        "gRPC/HTTP: median of each gRPC window over the HTTP windows either side; last columns: HTTP/gRPC"
    )
    print(
        f"{'':22} {'HTTP/s':>9} {'gRPC/s':>9} {'gRPC/HTTP':>10}  {'client CPU us/req':>17}  "
        f"{'server CPU us/req':>17}  {'mean batch':>11}"
    )
    for kind in ("texts", "images"):
        for c in clients:
            r = p[f"{kind}_c{c}"]
            h, g = r["http_windows"], r["grpc_windows"]
            cpu_c = f"{median(h, 'client_cpu_us'):.0f}/{median(g, 'client_cpu_us'):.0f}"
            cpu_s = f"{median(h, 'server_cpu_us'):.0f}/{median(g, 'server_cpu_us'):.0f}"
            batch = f"{median(h, 'mean_batch'):.1f}/{median(g, 'mean_batch'):.1f}"
            label = f"{kind}, {c} client{'s' if c > 1 else ''}"
            print(
                f"{label:22} {median(h, 'requests_per_s'):9.1f} {median(g, 'requests_per_s'):9.1f} "
                f"{r['ratio']:10.2f}  {cpu_c:>17}  {cpu_s:>17}  {batch:>11}"
            )
    one = p[f"texts_c{clients[0]}"]
    h, g = one["http_windows"], one["grpc_windows"]
    print(f"\n{'texts, ' + str(clients[0]) + ' client, latency':30} {'p50 ms':>8} {'p99 ms':>8}")
    for name, w in (("HTTP", h), ("gRPC", g)):
        print(f"{'  ' + name:30} {median(w, 'p50_ms'):8.2f} {median(w, 'p99_ms'):8.2f}")
    raw_rate, stream_rate = statistics.median(bulk_r["raw"]), statistics.median(bulk_r["served"])
    print(f"\n{'bulk, ' + str(bulk_r['items']) + ' texts':30} {'texts/s':>9}")
    print(f"{'  raw encode_text, batch ' + str(bulk_r['batch']):30} {raw_rate:9.1f}")
    print(f"{'  EmbedTextStream, one call':30} {stream_rate:9.1f}")
    ceiling = results["client_ceiling"]
    print(
        f"\ngRPC client alone against a null server, {top} clients: {ceiling['requests_per_s']:.0f}/s "
        f"({ceiling['client_cpu_us']:.0f} us CPU/request)"
    )
    goals = [
        (f"texts: gRPC/HTTP at {top} clients", p[f"texts_c{top}"]["ratio"], ">=", 1.0),
        (f"images: gRPC/HTTP at {top} clients", p[f"images_c{top}"]["ratio"], ">=", 1.0),
        (f"texts: gRPC p50 / HTTP p50 at {clients[0]} client", one["p50_ratio"], "<=", 1.0),
        ("stream / raw batched forward", bulk_r["ratio"], ">=", 0.9),
    ]
    results["goals"] = {}
    print(f"\n{'goal':42} {'value':>7}  {'target':8}")
    for name, value, op, bound in goals:
        ok = value >= bound if op == ">=" else value <= bound
        results["goals"][name] = {"value": value, "target": f"{op} {bound}", "pass": ok}
        print(f"{name:42} {value:7.2f}  {op} {bound:<5} {'PASS' if ok else 'FAIL'}")
    failed = {
        f"{key} {proto}": w["error_statuses"]
        for key, r in p.items()
        for proto in ("http", "grpc")
        for w in r[f"{proto}_windows"]
        if w["errors"]
    }
    if failed:
        print(f"requests that failed: {failed}")
    write_results(f"grpc-{results['arch']}-{results['device']}", results)


if __name__ == "__main__":
    main()
