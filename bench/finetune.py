"""Finetune throughput: LoRA against full finetuning of a real CLIP architecture with random weights.

The same training step as the finetune job (``registry.finetune``: symmetric InfoNCE with the
learnable temperature, AdamW), on random pixels and short captions; pairs/s, trainable parameters,
and peak GPU memory where there is a GPU.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from bench.embedding import write_results
from infra.settings import resolve_device
from registry.families.clip import ClipModel
from registry.finetune import FinetuneConfig, _autocast, contrastive_loss, make_optimizer, prepare

COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "white", "black")
SHAPES = ("circle", "square", "triangle", "star")


def measure(arch: str, mode: str, batch: int, steps: int, device: str, precision: str) -> dict[str, Any]:
    model = ClipModel.from_pretrained(arch, device=device, seed=0)
    config = FinetuneConfig(mode=mode, batch_size=batch)  # type: ignore[arg-type]
    prepare(model, config)
    net = model.model.train()
    opt = make_optimizer(net, config)
    size = model.image_size
    pixels = torch.randn(batch, 3, size, size, device=device)
    captions = [f"a photo of a {COLOURS[i % 8]} {SHAPES[(i // 8) % 4]} number {i}" for i in range(batch)]
    tokens = model.tokenize(captions).tokens.to(device)
    ids = torch.arange(batch, device=device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def step() -> float:
        with _autocast(device, precision):
            loss = contrastive_loss(net, pixels, tokens, ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())  # synchronises

    for _ in range(2):  # warm-up (allocator, kernels)
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - t0
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    total = sum(p.numel() for p in net.parameters())
    out = {
        "mode": mode,
        "pairs_per_s": batch * steps / seconds,
        "step_s": seconds / steps,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_frac": trainable / total,
    }
    if device.startswith("cuda"):
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=None, help="default: 32 on CPU, 256 on a GPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 3 on CPU, 20 on a GPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    args = parser.parse_args()
    device = resolve_device(args.device)
    gpu = device.startswith("cuda")
    batch = args.batch or (256 if gpu else 32)
    steps = args.steps or (20 if gpu else 3)
    if not gpu:
        torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = [measure(args.arch, mode, batch, steps, device, args.precision) for mode in ("lora", "full")]
    lora, full = rows
    where = torch.cuda.get_device_name() if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nfinetune throughput: {args.arch}, random weights, batch {batch}, {where}, precision {args.precision}")
    print(f"{'mode':<6} {'pairs/s':>9} {'step s':>8} {'trainable':>13} {'of total':>9} {'peak GiB':>9}")
    for r in rows:
        print(
            f"{r['mode']:<6} {r['pairs_per_s']:>9.1f} {r['step_s']:>8.3f} {r['trainable_params']:>13,} "
            f"{r['trainable_frac']:>8.2%} {r.get('peak_mem_gib', float('nan')):>9.2f}"
        )
    speedup = lora["pairs_per_s"] / full["pairs_per_s"]
    fewer = full["trainable_params"] / lora["trainable_params"]
    print(f"LoRA / full: {speedup:.2f}x pairs/s, {fewer:.0f}x fewer trainable parameters")
    write_results(
        f"finetune-{'cuda' if gpu else 'cpu'}",
        {
            "arch": args.arch,
            "batch": batch,
            "steps": steps,
            "device": where,
            "precision": args.precision,
            "rows": rows,
            "lora_over_full": speedup,
        },
    )


if __name__ == "__main__":
    main()
