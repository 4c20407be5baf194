"""What the three toy task trainers share: the config, the toy training set, the optimiser and its schedule."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers as T
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from infra.toyworld import Domain, Split, ToySample, ToyWorld, caption_for
from registry.toy_clip import TRAINING_THREADS

Progress = Callable[[int, int, float], None]


@dataclass(frozen=True)
class TaskTrainConfig:
    """Steps, sizes and rates of one toy task model. The vision tower comes from the toy CLIP and is
    finetuned at ``vision_lr``; everything new (decoders, heads) learns at ``lr``. ``image_size``: the side
    the model sees (the toy CLIP's positional embedding is resized to it)."""

    seed: int = 0
    image_size: int = 48
    n_single: int = 3000
    n_multi: int = 3000
    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    vision_lr: float = 2e-4
    weight_decay: float = 0.01
    warmup: int = 30
    bf16: bool = True  # forward passes under bf16 autocast where the CPU has bf16 matmuls (:func:`autocast`)
    threads: int = TRAINING_THREADS  # torch's intra-op threads while training: part of the recipe


def training_samples(config: TaskTrainConfig, domain: Domain = Domain.PLAIN) -> list[ToySample]:
    """Single-object images first, then 1–3-object scenes: train split, deterministic in the seed."""
    world = ToyWorld(seed=config.seed)
    samples = list(world.samples(config.n_single, Split.TRAIN, domain, n_objects=1))
    return samples + list(world.samples(config.n_multi, Split.TRAIN, domain, start=config.n_single))


def ordered_caption(sample: ToySample) -> str:
    """The caption with its objects in one fixed order, by colour then shape: a target a decoder can learn. The
    toy world's own order (the order the objects were drawn in) cannot be seen in the image, and an order by
    place asks the decoder for positions the image tokens hardly carry (measured: 0.28 and 0.23 of 2–3-object
    captions named every object, against 0.39 in this order, with the same steps)."""
    return caption_for(tuple(sorted(sample.objects, key=lambda o: (o.colour, o.shape))))


def tokenize_unique(tokenizer: T.PreTrainedTokenizerBase, texts: Sequence[str]) -> T.BatchEncoding:
    """``tokenizer(texts, padding=True)`` as tensors, each distinct text tokenized once: the toy world's texts
    repeat (the VQA model's 106,366 questions hold 35 distinct ones) and the word-level tokenizer is pure Python."""
    distinct = sorted(set(texts))
    where = {text: i for i, text in enumerate(distinct)}
    rows = torch.tensor([where[t] for t in texts])
    encoded = tokenizer(distinct, padding=True, return_tensors="pt")
    return T.BatchEncoding({key: value[rows] for key, value in encoded.items()})


def optimizer(model: nn.Module, vision: nn.Module, config: TaskTrainConfig) -> torch.optim.AdamW:
    """AdamW with the vision tower's trainable weights at ``vision_lr`` and the rest of ``model``'s at ``lr``."""
    tower = list(vision.parameters())
    ids = {id(p) for p in tower}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [
        {"params": [p for p in tower if p.requires_grad], "lr": config.vision_lr, "base_lr": config.vision_lr},
        {"params": [p for p in rest if p.requires_grad], "lr": config.lr, "base_lr": config.lr},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=config.weight_decay)


@functools.cache
def bf16_matmuls() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX-512 BF16 or AMX): then the trainers run their
    forward passes under bf16 autocast, weights and optimiser kept in fp32. Measured on the 2-core AMD EPYC
    machines of this project, the captioner's step takes 0.08 s under it against 0.15 s in fp32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def autocast(enabled: bool = True) -> torch.autocast:
    """bf16 autocast where ``enabled`` and :func:`bf16_matmuls`, a no-op elsewhere."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled and bf16_matmuls())


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
        with autocast(config.bf16):
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


class FeatureLookup(nn.Module):
    """Stands in for a frozen vision tower while a decoder trains: its input carries, in place of pixels, the
    rows of features computed once by the real tower (:func:`frozen_features`)."""

    def __init__(self, features: torch.Tensor) -> None:
        super().__init__()
        self.features = features

    @staticmethod
    def rows(indices: torch.Tensor) -> torch.Tensor:
        """``indices`` shaped as pixels (N, 1, 1, 1), for a model that checks its input's rank."""
        return indices.float().view(-1, 1, 1, 1)

    def forward(self, pixel_values: torch.Tensor, **_: object) -> BaseModelOutput:
        return BaseModelOutput(last_hidden_state=self.features[pixel_values.flatten(1)[:, 0].long()])


@torch.no_grad()
def frozen_features(tower: nn.Module, pixels: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """The last hidden states of ``tower`` for every image, computed once."""
    tower.eval()
    return torch.cat(
        [tower(pixel_values=pixels[i : i + chunk]).last_hidden_state for i in range(0, len(pixels), chunk)]
    )


def tower_features(
    clip_model_cfg: dict, tower: dict[str, torch.Tensor], pixels: torch.Tensor, size: int
) -> torch.Tensor:
    """What a CLIP-layout ``tower`` gives for ``pixels``: every token's last hidden state after the post-norm
    (as GIT's and BLIP's towers give them)."""
    from registry.families import clip_convert

    cfg = T.CLIPVisionConfig(**clip_convert.vision_config(clip_model_cfg, size))
    model = T.CLIPVisionModel(cfg)
    clip_convert.load_into(model, tower)
    hidden = frozen_features(model, pixels)
    with torch.no_grad():
        return model.post_layernorm(hidden)


def distil_tower(
    student: nn.Module, target: torch.Tensor, pixels: torch.Tensor, steps: int, lr: float = 1e-3, seed: int = 0
) -> float:
    """Train ``student`` (a vision tower) to give ``target`` for ``pixels`` (mean squared error); returns the
    final error. BLIP's tower has no pre-norm, so a CLIP-layout tower converted to it gives other features
    until it is taught them again."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    student.train()
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(len(pixels), (64,), generator=gen)
        with autocast():
            out = student(pixel_values=pixels[idx]).last_hidden_state
        loss = F.mse_loss(out.float(), target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    student.eval()
    return float(loss.detach())
