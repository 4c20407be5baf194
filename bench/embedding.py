"""Embedding throughput and latency, side by side in one run (``make bench``):

- the raw in-process forward of the model (pre-decoded tensors; batch 32 and batch 1);
- the vlmops embedding service under 1, 8 and 32 concurrent single-item clients (JPEG images);
- the obvious alternative: FastAPI calling the model once per request (``bench/naive_server.py``);
- the ceiling here: the same batcher and model behind a minimal HTTP server (``bench/bound_server.py``);
- the cost of API keys: the service with keys on against the same service with them off.

The clients are ``bench.loadgen``'s (closed loop, keep-alive, cheap enough not to be the bottleneck).
Targets 1, 3 and 4 are read from interleaved windows (raw or naive, service, raw or naive, ...; padded,
cut, padded, ...; see :func:`interleaved`), since these shared machines drift by tens of percent
within minutes.

    python -m bench.embedding [--arch ViT-B-32] [--seconds 6]

Prints a table of the performance targets and writes JSON under bench/results/. Random weights:
the arithmetic is the same as with trained ones.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from bench.loadgen import load
from infra.auth import KeyRing, create_key
from infra.images import to_base64
from infra.process import ServiceProcess, free_port, wait_http
from infra.settings import Settings
from infra.toyworld import Split, ToyWorld
from registry.families.clip import ClipModel
from registry.store import RegistryStore

RESULTS = Path(__file__).resolve().parent / "results"
QUERIES = [f"a {c} {s}" for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "triangle", "star")]


def timed_rate(fn: Callable[[], int], seconds: float) -> float:
    """Items per second of ``fn`` (which returns how many items it did), repeated for ``seconds``."""
    fn()  # warm-up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        done += fn()
    return done / (time.perf_counter() - t0)


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def batch32_forwards(model: ClipModel, images: list[Image.Image]) -> dict[str, Callable[[], int]]:
    """The raw batch-32 forwards the service is compared with (inputs made once, outside the timing):
    images from pixels, short texts cut, the same texts padded to the full context."""
    pixels = torch.stack([model.preprocess(im) for im in images[:32]])
    texts = model.tokenize(QUERIES * 2).tokens
    texts_full = model.tokenize(QUERIES * 2, cut=False).tokens
    return {
        "images": lambda: len(model.encode_pixels(pixels)),
        "texts": lambda: len(model.encode_tokens(texts)),
        "texts_padded": lambda: len(model.encode_tokens(texts_full)),
    }


def raw_numbers(model: ClipModel, images: list[Image.Image], seconds: float) -> dict[str, Any]:
    forward = batch32_forwards(model, images)
    pixels = torch.stack([model.preprocess(im) for im in images[:1]])
    jpegs = [jpeg(im) for im in images[:32]]
    one_text = model.tokenize(QUERIES[:1]).tokens
    lat: list[float] = []

    def single_text() -> int:
        t = time.perf_counter()
        model.encode_tokens(one_text)
        lat.append(time.perf_counter() - t)
        return 1

    def from_jpeg() -> int:
        decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in jpegs]
        return len(model.encode_images(decoded))

    out: dict[str, Any] = {
        "images_per_s_b32": timed_rate(forward["images"], seconds),
        "images_per_s_b1": timed_rate(lambda: len(model.encode_pixels(pixels)), seconds),
        "images_per_s_b32_from_jpeg_serial": timed_rate(from_jpeg, seconds),
        "texts_per_s_b32": timed_rate(forward["texts"], seconds),
        "texts_per_s_b1": timed_rate(single_text, seconds),
    }
    out["text_b1_p50_ms"] = statistics.median(lat) * 1000
    # target 4 side by side in time: padded, cut, padded, cut, padded, cut, padded
    out["cut_vs_padded"] = interleaved(
        lambda: timed_rate(forward["texts_padded"], seconds), lambda: timed_rate(forward["texts"], seconds), 3
    )
    out["texts_per_s_b32_padded77"] = statistics.mean(out["cut_vs_padded"]["raw"])
    print(f"  short texts, cut / padded, interleaved: {out['cut_vs_padded']['ratio']:.1f}", flush=True)
    return out


def interleaved_kinds(seconds: float) -> list[tuple[str, str, float]]:
    """(kind, route, window) of the interleaved targets: an image batch of 32 takes seconds on a CPU,
    so images get windows three times as long."""
    return [("texts", "/embed_text", seconds), ("images", "/embed_image", seconds * 3)]


def interleaved(raw: Callable[[], float], served: Callable[[], float], rounds: int) -> dict[str, Any]:
    """raw, served, raw, served, ..., raw: each served window against the mean of the raw (reference)
    windows either side of it, and the median of those ratios. These machines drift by tens of
    percent within minutes; side by side in time, a ratio compares like with like."""
    raws = [raw()]
    served_rates: list[float] = []
    for _ in range(rounds):
        served_rates.append(served())
        raws.append(raw())
    ratios = [s / ((a + b) / 2) for s, a, b in zip(served_rates, raws, raws[1:], strict=False)]
    return {"raw": raws, "served": served_rates, "ratios": ratios, "ratio": statistics.median(ratios)}


def near_the_limit(
    url: str, model: ClipModel, images: list[Image.Image], clients: int, seconds: float, rounds: int, payloads: Any
) -> dict[str, Any]:
    """Target 1: the service at ``clients`` single-item clients against the raw batch-32 forward,
    interleaved (:func:`interleaved`), for texts and for images."""
    forward = batch32_forwards(model, images)
    out: dict[str, Any] = {}
    for kind, route, window in interleaved_kinds(seconds):

        def raw(k: str = kind, w: float = window) -> float:
            return timed_rate(forward[k], w)

        def served(rt: str = route, k: str = kind, w: float = window) -> float:
            return float(load(url, rt, payloads[k], clients, w)["requests_per_s"])

        out[kind] = r = interleaved(raw, served, rounds)
        windows = zip(r["served"], r["raw"], r["raw"][1:], strict=False)
        pairs = ", ".join(f"{s:.1f}/{(a + b) / 2:.1f}" for s, a, b in windows)
        print(f"  {kind} x{clients} clients / raw batch 32, interleaved: {pairs} -> {r['ratio']:.2f}", flush=True)
    return out


def measure(
    url: str, clients: list[int], seconds: float, text_p: list[Any], image_p: list[Any] | None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kinds = [("texts", "/embed_text", text_p)] + ([("images", "/embed_image", image_p)] if image_p else [])
    for c in clients:
        for kind, route, payloads in kinds:
            # an image batch of 32 takes seconds on a CPU: a longer window, or a handful of batches
            # and the start-up transient would decide the figure
            window = seconds * (3 if kind == "images" else 1)
            out[f"{kind}_c{c}"] = r = load(url, route, payloads, c, window)
            print(f"  {url} {kind} x{c} clients: {r['requests_per_s']:.1f}/s, p50 {r['p50_ms']:.0f} ms", flush=True)
    # one client again, right after the heaviest load: a batcher that learned to wait shows it here
    out["texts_c1_after_load"] = r = load(url, "/embed_text", text_p, 1, seconds)
    print(f"  {url} texts x1 client after load: p50 {r['p50_ms']:.0f} ms", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=3, help="service windows between reference ones (targets 1, 3)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    clients = [int(c) for c in args.clients.split(",")]
    model = ClipModel.from_pretrained(args.arch, pretrained=None, device=device, seed=0)
    if device == "cuda":
        model.configure_runtime("fp16")
    images = [s.image.resize((model.image_size, model.image_size)) for s in ToyWorld().samples(64, Split.TEST)]
    results: dict[str, Any] = {
        "arch": args.arch,
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "raw": raw_numbers(model, images, args.seconds),
    }
    image_p = [{"items": [{"image": to_base64(jpeg(im))}]} for im in images]
    text_p = [{"items": [{"text": q}]} for q in QUERIES]
    batch_json = [{"items": [{"text": q} for q in QUERIES * 2]}]
    batch_b64 = [{"items": [{"text": q, "encoding": "base64"} for q in QUERIES * 2]}]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        store = RegistryStore.from_settings(Settings(home=home))
        info = store.register("bench-clip", model)
        store.promote("bench-clip", info.version)
        model_dir = store.download(info)
        env = {
            "VLMOPS_HOME": str(home),
            "VLMOPS_EMBEDDING__MODEL_NAME": "bench-clip",
            "VLMOPS_EMBEDDING__MAX_BATCH_SIZE": "32",
            "VLMOPS_EMBEDDING__MAX_LATENCY_MS": "20000" if device == "cpu" else "1000",
        }
        with ServiceProcess("embedding", env=env, log_path=home / "service.log") as svc:
            results["vlmops"] = measure(svc.url, clients, args.seconds, text_p, image_p)
            payloads = {"texts": text_p, "images": image_p}
            results["interleaved"] = near_the_limit(
                svc.url, model, images, clients[-1], args.seconds, args.rounds, payloads
            )
            for name, payload in (("batch32_json", batch_json), ("batch32_base64", batch_b64)):
                results["vlmops"][name] = load(svc.url, "/embed_text", payload, 1, args.seconds)
            results["auth"] = with_keys(svc.url, env, home, clients[-1], args.seconds, args.rounds, payloads)
            with peer_server("naive_server", model_dir) as naive_url:
                results["vs_naive"] = against_naive(
                    svc.url, naive_url, clients[-1], args.seconds, args.rounds, payloads
                )
        remeasure_raw(results["raw"], model, images, args.seconds)
        del model
        results["naive"] = run_peer("naive_server", model_dir, args.seconds, text_p, image_p, [clients[0], clients[-1]])
        results["bound"] = run_peer("bound_server", model_dir, args.seconds, text_p, None, [clients[-1]])
    report(results)


def remeasure_raw(raw: dict[str, Any], model: ClipModel, images: list[Image.Image], seconds: float) -> None:
    """The batch-32 forwards again, after the service ran: shared machines drift by tens of percent
    within minutes, so the ratios use the mean of both measurements (both are kept)."""
    forward = batch32_forwards(model, images)
    again = {
        "images_per_s_b32": timed_rate(forward["images"], seconds),
        "texts_per_s_b32": timed_rate(forward["texts"], seconds),
    }
    for key, value in again.items():
        raw[f"{key}_before"], raw[f"{key}_after"] = raw[key], value
        raw[key] = (raw[key] + value) / 2


@contextmanager
def peer_server(module: str, model_dir: Path) -> Iterator[str]:
    """A peer server (``bench.<module>``) on the same model, on a free port; yields its URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", f"bench.{module}", str(model_dir), str(port)])
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", 120, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


def run_peer(
    module: str, model_dir: Path, seconds: float, text_p: list[Any], image_p: list[Any] | None, clients: list[int]
) -> dict[str, Any]:
    """A peer server measured like the service (texts only without ``image_p``)."""
    with peer_server(module, model_dir) as url:
        return measure(url, clients, seconds, text_p, image_p)


def against_naive(
    url: str, naive_url: str, clients: int, seconds: float, rounds: int, payloads: dict[str, Any]
) -> dict[str, Any]:
    """Target 3: the service against the naive server at ``clients`` clients, windows interleaved."""
    out: dict[str, Any] = {}
    for kind, route, window in interleaved_kinds(seconds):

        def rate(at: str, rt: str = route, k: str = kind, w: float = window) -> float:
            return float(load(at, rt, payloads[k], clients, w)["requests_per_s"])

        out[kind] = r = interleaved(lambda: rate(naive_url), lambda: rate(url), rounds)
        print(f"  {kind} x{clients} clients, vlmops / naive, interleaved: {r['ratio']:.2f}", flush=True)
    return out


def with_keys(
    url: str, env: dict[str, str], home: Path, clients: int, seconds: float, rounds: int, payloads: dict[str, Any]
) -> dict[str, Any]:
    """Target 7: a second server with API keys on (each request checked: Bearer header, salted SHA-256,
    constant-time compare) against the first, keys off, interleaved, texts (the lightest request,
    where a per-request cost shows most). A third server, keys off too, gives the noise floor of
    comparing two processes (A/A). And the check timed alone: its share of a request, free of noise."""
    key, entry = create_key("bench", ["read"])
    headers = {"authorization": f"Bearer {key}"}
    keyed_env = env | {"VLMOPS_AUTH__KEYS": entry.line()}
    with (
        ServiceProcess("embedding", env=keyed_env, log_path=home / "service-keys.log") as keyed,
        ServiceProcess("embedding", env=env, log_path=home / "service-twin.log") as twin,
    ):
        check = load(keyed.url, "/embed_text", payloads["texts"], 1, 0.5, headers=headers)  # the key works ...
        refused = load(keyed.url, "/embed_text", payloads["texts"], 1, 0.5)  # ... and only with it
        if not check["requests"] or check["errors"] or refused["requests"] or not refused["error_statuses"].get("401"):
            raise RuntimeError("the keyed service did not refuse a request without its key")

        def rate(at: str, hdrs: dict[str, str] | None = None) -> float:
            out = load(at, "/embed_text", payloads["texts"], clients, seconds, headers=hdrs)
            if out["errors"]:
                raise RuntimeError(f"{out['errors']} requests failed: {out['error_statuses']}")
            return float(out["requests_per_s"])

        rate(keyed.url, headers), rate(twin.url)  # warm up, as the first server is
        r = interleaved(lambda: rate(url), lambda: rate(keyed.url, headers), rounds)
        aa = interleaved(lambda: rate(url), lambda: rate(twin.url), rounds)
    ring = KeyRing([entry, *(create_key(f"other-{i}", ["read"])[1] for i in range(50))])
    n = 20_000
    check_s = timeit.timeit(lambda: ring.authenticate(headers["authorization"]), number=n) / n
    share = check_s * statistics.mean(r["raw"])
    print(
        f"  texts x{clients} clients, keys on / off, interleaved: {r['ratio']:.3f} "
        f"(keys off / off, two processes: {aa['ratio']:.3f}); the key check alone: {check_s * 1e6:.2f} us, "
        f"{share * 100:.3f} % of a request's time",
        flush=True,
    )
    return {"texts": r, "a_a": aa, "check_us": check_s * 1e6, "check_share": share}


def client_counts(peer: dict[str, Any]) -> list[int]:
    """The client counts a peer was measured at (keys ``texts_c<N>``), ascending."""
    return sorted(int(m[1]) for k in peer if (m := re.fullmatch(r"texts_c(\d+)", k)))


def report(results: dict[str, Any]) -> None:
    raw, svc, naive, bound = results["raw"], results["vlmops"], results["naive"], results["bound"]
    near, vs_naive = results["interleaved"], results["vs_naive"]
    top = client_counts(svc)[-1]
    print(f"\nembedding — {results['arch']} random weights on {results['device']} ({results['torch_threads']} threads)")
    print(f"{'':34} {'texts/s':>9} {'images/s':>9} {'p50 ms t/i':>12}")
    print(f"{'raw forward, batch 32 (mean)':34} {raw['texts_per_s_b32']:9.1f} {raw['images_per_s_b32']:9.1f}")
    for when in ("before", "after"):
        t, i = raw[f"texts_per_s_b32_{when}"], raw[f"images_per_s_b32_{when}"]
        print(f"{'  ' + when + ' the service ran':34} {t:9.1f} {i:9.1f}")
    print(f"{'raw forward, batch 1':34} {raw['texts_per_s_b1']:9.1f} {raw['images_per_s_b1']:9.1f}")
    for name, peer in (("vlmops", svc), ("naive FastAPI", naive)):
        for key in client_counts(peer):
            t, i = peer[f"texts_c{key}"], peer[f"images_c{key}"]
            label = f"{name}, {key} clients"
            print(
                f"{label:34} {t['requests_per_s']:9.1f} {i['requests_per_s']:9.1f} {t['p50_ms']:5.0f}/{i['p50_ms']:.0f}"
            )
    b32 = bound[f"texts_c{top}"]
    label = f"bound server, {top} clients (texts)"
    print(f"{label:34} {b32['requests_per_s']:9.1f} {'':>9} {b32['p50_ms']:5.0f}")
    t32, i32 = svc[f"texts_c{top}"], svc[f"images_c{top}"]
    b_json, b_b64 = svc["batch32_json"], svc["batch32_base64"]
    targets = [
        ("1 texts: service/raw at 32 clients", near["texts"]["ratio"], ">= 0.9"),
        ("1 images: service/raw at 32 clients", near["images"]["ratio"], ">= 0.9"),
        ("1 texts: same, from the windows above", t32["requests_per_s"] / raw["texts_per_s_b32"], "info"),
        ("1 images: same, from the windows above", i32["requests_per_s"] / raw["images_per_s_b32"], "info"),
        ("1 texts: bound server/raw (the ceiling here)", b32["requests_per_s"] / raw["texts_per_s_b32"], "info"),
        ("2 idle p50 - raw b1 (ms)", svc["texts_c1"]["p50_ms"] - raw["text_b1_p50_ms"], "<= 10"),
        ("2 same, right after 32 clients (ms)", svc["texts_c1_after_load"]["p50_ms"] - raw["text_b1_p50_ms"], "<= 10"),
        ("3 texts: vlmops/naive at 32 clients", vs_naive["texts"]["ratio"], ">= 3"),
        ("3 images: vlmops/naive at 32 clients", vs_naive["images"]["ratio"], ">= 1.6"),
        ("4 short texts: cut/padded raw", raw["cut_vs_padded"]["ratio"], ">= 10"),
        ("5 JPEG service / tensor raw (images)", near["images"]["ratio"], ">= 0.9"),
        ("6 batch-32 response bytes json/base64", b_json["bytes_per_response"] / b_b64["bytes_per_response"], "info"),
        ("6 batch-32 requests/s base64/json", b_b64["requests_per_s"] / b_json["requests_per_s"], "info"),
        ("7 texts: keys on / off at 32 clients", results["auth"]["texts"]["ratio"], ">= 0.98"),
        ("7 same, keys off / off (noise floor)", results["auth"]["a_a"]["ratio"], "info"),
        ("7 key check: share of a request's time (%)", results["auth"]["check_share"] * 100, "<= 2"),
    ]
    results["targets"] = {name: {"value": value, "target": goal} for name, value, goal in targets}
    print(f"\n{'target':42} {'value':>8}  goal")
    for name, value, goal in targets:
        print(f"{name:42} {value:8.2f}  {goal}")
    errors = {k: v["errors"] for peer in (svc, naive, bound) for k, v in peer.items() if v.get("errors")}
    if errors:
        print(f"requests that failed: {errors}")
    write_results(f"embedding-{results['device']}", results)


def write_results(name: str, results: dict[str, Any]) -> Path:
    """Write ``results`` as JSON under bench/results/, stamped with the time."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"written {out}")
    return out


if __name__ == "__main__":
    main()
