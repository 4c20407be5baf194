"""What the three toy task trainers share: the config, the toy training set, the optimiser and its schedule."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from infra.toyworld import Domain, Split, ToySample, ToyWorld, caption_for

Progress = Callable[[int, int, float], None]


@dataclass(frozen=True)
class TaskTrainConfig:
    """Steps, sizes and rates of one toy task model. The vision tower comes from the toy CLIP and is
    finetuned at ``vision_lr``; everything new (decoders, heads) learns at ``lr``."""

    seed: int = 0
    n_single: int = 3000
    n_multi: int = 3000
    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    vision_lr: float = 2e-4
    weight_decay: float = 0.01
    warmup: int = 30


def training_samples(config: TaskTrainConfig, domain: Domain = Domain.PLAIN) -> list[ToySample]:
    """Single-object images first, then 1–3-object scenes: train split, deterministic in the seed."""
    world = ToyWorld(seed=config.seed)
    samples = list(world.samples(config.n_single, Split.TRAIN, domain, n_objects=1))
    return samples + list(world.samples(config.n_multi, Split.TRAIN, domain, start=config.n_single))


def ordered_caption(sample: ToySample) -> str:
    """The caption with its objects left to right (then top to bottom): a target a decoder can learn,
    where the toy world's own order (the order objects were drawn in) cannot be seen in the image."""
    return caption_for(tuple(sorted(sample.objects, key=lambda o: (o.box[0] + o.box[2], o.box[1] + o.box[3]))))


def optimizer(
    vision: Iterable[nn.Parameter], rest: Iterable[nn.Parameter], config: TaskTrainConfig
) -> torch.optim.AdamW:
    groups = [
        {"params": [p for p in vision if p.requires_grad], "lr": config.vision_lr, "base_lr": config.vision_lr},
        {"params": [p for p in rest if p.requires_grad], "lr": config.lr, "base_lr": config.lr},
    ]
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def lr_factor(step: int, config: TaskTrainConfig) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    frac = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.5 * (1 + math.cos(math.pi * frac))


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    config: TaskTrainConfig,
    n_samples: int,
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    progress: Progress | None = None,
) -> dict[str, float]:
    """``config.steps`` AdamW steps on seeded random batches of sample indices; ``loss_of(indices)`` gives the
    batch's loss. Returns the final loss (mean of the last 20 steps) and the seconds taken."""
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    model.train()
    t0 = time.perf_counter()
    recent: list[float] = []
    for step in range(config.steps):
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(step, config)
        idx = torch.randint(n_samples, (config.batch_size,), generator=gen)
        loss = loss_of(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent = [*recent[-19:], float(loss.detach())]
        if progress is not None:
            progress(step + 1, config.steps, recent[-1])
    model.eval()
    return {"final_loss": sum(recent) / max(1, len(recent)), "train_seconds": time.perf_counter() - t0}
