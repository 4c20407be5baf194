"""Embedding throughput: the service under 1, 8 and 32 concurrent single-item clients against the raw
in-process batched forward of the same model, in the same run.

    python -m bench.embedding [--arch ViT-B-32] [--seconds 8]

Prints a table and writes JSON under bench/results/. Random weights: the arithmetic is the same.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import torch

from infra.images import encode_png, to_base64
from infra.process import ServiceProcess
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


def raw_numbers(model: ClipModel, images: list[Any], seconds: float) -> dict[str, float]:
    pixels = torch.stack([model.preprocess(im) for im in images[:32]])
    one_text = model.tokenize(QUERIES[:1]).tokens
    texts = model.tokenize(QUERIES * 2).tokens
    texts_full = model.tokenize(QUERIES * 2, cut=False).tokens
    lat: list[float] = []

    def single_text() -> int:
        t = time.perf_counter()
        model.encode_tokens(one_text)
        lat.append(time.perf_counter() - t)
        return 1

    out = {
        "raw_images_per_s_b32": timed_rate(lambda: len(model.encode_pixels(pixels)), seconds),
        "raw_images_per_s_b1": timed_rate(lambda: len(model.encode_pixels(pixels[:1])), seconds),
        "raw_texts_per_s_b32": timed_rate(lambda: len(model.encode_tokens(texts)), seconds),
        "raw_texts_per_s_b32_padded77": timed_rate(lambda: len(model.encode_tokens(texts_full)), seconds),
        "raw_texts_per_s_b1": timed_rate(single_text, seconds),
    }
    out["raw_text_b1_p50_ms"] = statistics.median(lat) * 1000
    return out


async def load(url: str, route: str, payloads: list[dict[str, Any]], clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(k: int, http: httpx.AsyncClient) -> None:
        nonlocal errors
        i = k
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            resp = await http.post(route, json=payloads[i % len(payloads)])
            if resp.status_code != 200:
                errors += 1
            latencies.append(time.perf_counter() - t)
            i += clients

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        await http.post(route, json=payloads[0])  # warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k, http) for k in range(clients)))
        wall = time.perf_counter() - t0
    return {
        "per_s": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": sorted(latencies)[int(len(latencies) * 0.99) - 1] * 1000
        if len(latencies) > 1
        else latencies[0] * 1000,
        "errors": errors,
        "requests": len(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", default="1,8,32")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = ClipModel.from_pretrained(args.arch, pretrained=None, device=device, seed=0)
    world = ToyWorld()
    images = [s.image.resize((model.image_size, model.image_size)) for s in world.samples(64, Split.TEST)]
    results: dict[str, Any] = {
        "arch": args.arch,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "raw": raw_numbers(model, images, args.seconds),
        "service": {},
    }
    image_payloads = [{"items": [{"image": to_base64(encode_png(im))}]} for im in images]
    text_payloads = [{"items": [{"text": q}]} for q in QUERIES]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        store = RegistryStore.from_settings(Settings(home=home))
        info = store.register("bench-clip", model)
        store.promote("bench-clip", info.version)
        del model
        env = {
            "VLMOPS_HOME": str(home),
            "VLMOPS_EMBEDDING__MODEL_NAME": "bench-clip",
            "VLMOPS_EMBEDDING__MAX_BATCH_SIZE": "32",
        }
        with ServiceProcess("embedding", env=env, log_path=home / "service.log") as svc:
            for clients in [int(c) for c in args.clients.split(",")]:
                for kind, route, payloads in (
                    ("texts", "/embed_text", text_payloads),
                    ("images", "/embed_image", image_payloads),
                ):
                    key = f"{kind}_c{clients}"
                    results["service"][key] = asyncio.run(load(svc.url, route, payloads, clients, args.seconds))
                    print(f"  {key}: {results['service'][key]['per_s']:.1f}/s", flush=True)
    report(results)


def report(results: dict[str, Any]) -> None:
    raw, svc = results["raw"], results["service"]
    rows = [("raw batched forward (b=32)", raw["raw_texts_per_s_b32"], raw["raw_images_per_s_b32"], "", "")]
    rows.append(("raw forward b=1", raw["raw_texts_per_s_b1"], raw["raw_images_per_s_b1"], "", ""))
    for clients in sorted({int(k.split("_c")[1]) for k in svc}):
        t, i = svc[f"texts_c{clients}"], svc[f"images_c{clients}"]
        rows.append(
            (
                f"service, {clients} clients",
                t["per_s"],
                i["per_s"],
                f"{t['per_s'] / raw['raw_texts_per_s_b32']:.2f} / {i['per_s'] / raw['raw_images_per_s_b32']:.2f}",
                f"{t['p50_ms']:.0f} / {i['p50_ms']:.0f}",
            )
        )
    print(f"\nembedding throughput — {results['arch']} random weights on {results['device']}")
    print(f"{'':32} {'texts/s':>9} {'images/s':>9} {'ratio vs raw (t/i)':>20} {'p50 ms (t/i)':>14}")
    for name, t, i, ratio, p50 in rows:
        print(f"{name:32} {t:9.1f} {i:9.1f} {ratio:>20} {p50:>14}")
    print(
        f"short-query text cut: {raw['raw_texts_per_s_b32'] / raw['raw_texts_per_s_b32_padded77']:.1f}x faster "
        f"than padding to 77; raw text b=1 p50 {raw['raw_text_b1_p50_ms']:.1f} ms"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"embedding-{results['device']}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
