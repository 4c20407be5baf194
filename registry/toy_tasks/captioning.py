"""A tiny GIT captioner on the toy world: the toy CLIP's vision tower (converted exactly) under a
two-layer text decoder, trained with teacher forcing on the toy captions."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import torch
import transformers as T

from infra.local_tokenizers import bert_tokenizer
from registry.families import clip_convert
from registry.families.clip import ClipModel
from registry.families.git_caption import GitCaptioner
from registry.toy_tasks.common import Progress, TaskTrainConfig, optimizer, ordered_caption, train, training_samples

CONFIG = TaskTrainConfig(steps=500, lr=2e-3, vision_lr=3e-4)
IMAGE_SIZE = 48  # the toy CLIP sees 32 px; objects in 2–3-object scenes need more than one 8 px patch
DECODER = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 512}


def build(clip: ClipModel, seed: int = 0, image_size: int = IMAGE_SIZE) -> GitCaptioner:
    """An untrained GIT whose vision tower is ``clip``'s, with a word-level tokenizer of the toy words."""
    tok = bert_tokenizer(Path(tempfile.mkdtemp(prefix="vlmops-git-tok-")))
    torch.manual_seed(seed)
    cfg = T.GitConfig(
        vision_config=clip_convert.vision_config(clip.model_cfg, image_size),
        vocab_size=len(tok),
        max_position_embeddings=32,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id,
        **DECODER,
    )
    model = T.GitForCausalLM(cfg)
    clip_convert.load_into(model.git.image_encoder.vision_model, clip_convert.vision_state(clip.model, image_size=image_size))
    size = image_size
    pp = clip.preprocess_cfg
    image_proc = T.CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(pp["mean"]),
        image_std=list(pp["std"]),
    )
    return GitCaptioner(model, T.GitProcessor(image_processor=image_proc, tokenizer=tok), "vlmops train-toy")


def train_captioner(
    clip: ClipModel, config: TaskTrainConfig = CONFIG, progress: Progress | None = None, image_size: int = IMAGE_SIZE
) -> tuple[GitCaptioner, dict[str, float]]:
    captioner = build(clip, config.seed, image_size)
    samples = training_samples(config)
    proc, model = captioner.processor, captioner.model
    pixels = proc.image_processor([s.image for s in samples], return_tensors="pt").pixel_values
    text = proc.tokenizer([ordered_caption(s) for s in samples], padding=True, return_tensors="pt")
    labels = text.input_ids.masked_fill(text.attention_mask == 0, -100)
    vision = list(model.git.image_encoder.parameters())
    ids = {id(p) for p in vision}
    opt = optimizer(vision, [p for p in model.parameters() if id(p) not in ids], config)

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        out = model(
            input_ids=text.input_ids[idx],
            attention_mask=text.attention_mask[idx],
            pixel_values=pixels[idx],
            labels=labels[idx],
        )
        return out.loss

    metrics = train(model, opt, config, len(samples), loss_of, progress)
    return captioner, metrics


def quick(steps: int) -> TaskTrainConfig:
    return replace(CONFIG, steps=steps)
