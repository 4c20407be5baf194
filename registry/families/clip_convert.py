"""open_clip's ViT and text towers as transformers weights: the task models start from a trained CLIP.

open_clip's layout and transformers' CLIP layout differ in names only: attention's fused
``in_proj_weight`` splits into q, k and v; the class token, positional embedding, pre/post layer
norms, MLP and projections map one to one. GIT's and OWL-ViT's vision towers are CLIP's (the
conversion is exact: a test compares outputs); BLIP's vision tower keeps q, k and v fused and has
no pre-norm, so it starts close to the CLIP and is finetuned from there.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer, default_bpe
from transformers import CLIPTokenizer

Tensors = dict[str, torch.Tensor]


def vision_config(model_cfg: dict[str, Any], image_size: int | None = None) -> dict[str, Any]:
    """A transformers ``CLIPVisionConfig``-style dict for open_clip's ``vision_cfg`` (at ``image_size``: the
    positional embedding is then resized by :func:`vision_state`)."""
    v = model_cfg["vision_cfg"]
    width = int(v["width"])
    return {
        "hidden_size": width,
        "intermediate_size": int(width * v.get("mlp_ratio", 4.0)),
        "num_hidden_layers": int(v["layers"]),
        "num_attention_heads": width // int(v.get("head_width", 64)),
        "image_size": int(image_size or v["image_size"]),
        "patch_size": int(v["patch_size"]),
        "hidden_act": "quick_gelu" if model_cfg.get("quick_gelu") else "gelu",
        "layer_norm_eps": 1e-5,
    }


def text_config(model_cfg: dict[str, Any]) -> dict[str, Any]:
    t = model_cfg["text_cfg"]
    width = int(t["width"])
    return {
        "hidden_size": width,
        "intermediate_size": int(width * t.get("mlp_ratio", 4.0)),
        "num_hidden_layers": int(t["layers"]),
        "num_attention_heads": int(t["heads"]),
        "max_position_embeddings": int(t["context_length"]),
        "vocab_size": int(t["vocab_size"]),
        "hidden_act": "quick_gelu" if model_cfg.get("quick_gelu") else "gelu",
        "layer_norm_eps": 1e-5,
    }


def _blocks(src: Tensors, prefix: str, dst: str, n_layers: int, fused_qkv: bool) -> Tensors:
    out: Tensors = {}
    for i in range(n_layers):
        s, d = f"{prefix}transformer.resblocks.{i}.", f"{dst}encoder.layers.{i}."
        if fused_qkv:
            out[f"{d}self_attn.qkv.weight"] = src[f"{s}attn.in_proj_weight"]
            out[f"{d}self_attn.qkv.bias"] = src[f"{s}attn.in_proj_bias"]
            out[f"{d}self_attn.projection.weight"] = src[f"{s}attn.out_proj.weight"]
            out[f"{d}self_attn.projection.bias"] = src[f"{s}attn.out_proj.bias"]
        else:
            for name, w, b in zip(
                ("q_proj", "k_proj", "v_proj"),
                src[f"{s}attn.in_proj_weight"].chunk(3),
                src[f"{s}attn.in_proj_bias"].chunk(3),
                strict=True,
            ):
                out[f"{d}self_attn.{name}.weight"], out[f"{d}self_attn.{name}.bias"] = w, b
            out[f"{d}self_attn.out_proj.weight"] = src[f"{s}attn.out_proj.weight"]
            out[f"{d}self_attn.out_proj.bias"] = src[f"{s}attn.out_proj.bias"]
        for a, b in (
            ("ln_1", "layer_norm1"),
            ("ln_2", "layer_norm2"),
            ("mlp.c_fc", "mlp.fc1"),
            ("mlp.c_proj", "mlp.fc2"),
        ):
            out[f"{d}{b}.weight"], out[f"{d}{b}.bias"] = src[f"{s}{a}.weight"], src[f"{s}{a}.bias"]
    return out


def resized_positions(positions: torch.Tensor, grid: int) -> torch.Tensor:
    """A ``(1 + g*g, D)`` positional embedding for a ``grid`` x ``grid`` patch grid: the class position kept,
    the patch positions resized bicubically (a higher input resolution for the same ViT)."""
    old = round((positions.shape[0] - 1) ** 0.5)
    if old == grid:
        return positions
    patches = positions[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([positions[:1], patches.permute(0, 2, 3, 1).reshape(grid * grid, -1)])


def _visual(clip: open_clip.CLIP, image_size: int | None) -> Tensors:
    src = {k: v.detach().clone() for k, v in clip.visual.state_dict().items()}
    if image_size is not None:
        grid = image_size // src["conv1.weight"].shape[-1]
        src["positional_embedding"] = resized_positions(src["positional_embedding"], grid)
    return src


def vision_state(
    clip: open_clip.CLIP, dst: str = "", pre_norm: str = "pre_layrnorm", image_size: int | None = None
) -> Tensors:
    """open_clip's visual tower as a transformers CLIP-style vision transformer's weights under ``dst``
    (``pre_norm`` is its pre-norm's name: ``pre_layrnorm`` in CLIP and GIT, ``pre_layernorm`` in OWL-ViT)."""
    src = _visual(clip, image_size)
    out = {
        f"{dst}embeddings.class_embedding": src["class_embedding"],
        f"{dst}embeddings.patch_embedding.weight": src["conv1.weight"],
        f"{dst}embeddings.position_embedding.weight": src["positional_embedding"],
        f"{dst}{pre_norm}.weight": src["ln_pre.weight"],
        f"{dst}{pre_norm}.bias": src["ln_pre.bias"],
        f"{dst}post_layernorm.weight": src["ln_post.weight"],
        f"{dst}post_layernorm.bias": src["ln_post.bias"],
    }
    return out | _blocks(src, "", dst, len(clip.visual.transformer.resblocks), fused_qkv=False)


def to_blip_layout(state: Tensors, dst: str = "vision_model.") -> Tensors:
    """A CLIP-layout vision tower's weights (:func:`vision_state`, or a trained OWL-ViT's or GIT's tower) in
    BLIP's layout: q, k and v fused, a patch bias (zero), and no pre-norm (it is dropped)."""
    conv = state["embeddings.patch_embedding.weight"]
    out = {
        f"{dst}embeddings.class_embedding": state["embeddings.class_embedding"].reshape(1, 1, -1),
        f"{dst}embeddings.patch_embedding.weight": conv,
        f"{dst}embeddings.patch_embedding.bias": torch.zeros(conv.shape[0]),
        f"{dst}embeddings.position_embedding": state["embeddings.position_embedding.weight"][None],
        f"{dst}post_layernorm.weight": state["post_layernorm.weight"],
        f"{dst}post_layernorm.bias": state["post_layernorm.bias"],
    }
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for i in layers:
        s, d = f"encoder.layers.{i}.", f"{dst}encoder.layers.{i}."
        for kind in ("weight", "bias"):
            out[f"{d}self_attn.qkv.{kind}"] = torch.cat([state[f"{s}self_attn.{p}_proj.{kind}"] for p in "qkv"])
            out[f"{d}self_attn.projection.{kind}"] = state[f"{s}self_attn.out_proj.{kind}"]
            for name in ("layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2"):
                out[f"{d}{name}.{kind}"] = state[f"{s}{name}.{kind}"]
    return out


def tower_state(vision_model: torch.nn.Module) -> Tensors:
    """A transformers CLIP-style vision transformer's own weights, named as :func:`vision_state` names them."""
    return {
        k.replace("pre_layernorm", "pre_layrnorm"): v.detach().clone() for k, v in vision_model.state_dict().items()
    }


def text_state(clip: open_clip.CLIP, dst: str = "") -> Tensors:
    """open_clip's text tower as a transformers CLIP text transformer's weights under ``dst``."""
    src = {k: v.detach().clone() for k, v in clip.state_dict().items() if not k.startswith("visual.")}
    out = {
        f"{dst}embeddings.token_embedding.weight": src["token_embedding.weight"],
        f"{dst}embeddings.position_embedding.weight": src["positional_embedding"],
        f"{dst}final_layer_norm.weight": src["ln_final.weight"],
        f"{dst}final_layer_norm.bias": src["ln_final.bias"],
    }
    return out | _blocks(src, "", dst, len(clip.transformer.resblocks), fused_qkv=False)


def projections(clip: open_clip.CLIP) -> Tensors:
    """``visual_projection`` and ``text_projection`` (transformers' Linear layout) and ``logit_scale``."""
    return {
        "visual_projection.weight": clip.visual.proj.detach().T.clone(),
        "text_projection.weight": clip.text_projection.detach().T.clone(),
        "logit_scale": clip.logit_scale.detach().clone(),
    }


def load_into(module: torch.nn.Module, state: Tensors) -> None:
    """Copy ``state`` into ``module``; every key must exist there with the same shape."""
    own = module.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise KeyError(f"no such weights in {type(module).__name__}: {unknown[:5]}")
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise ValueError(f"{key}: shape {tuple(value.shape)} does not fit {tuple(own[key].shape)}")
    module.load_state_dict(state, strict=False)


def clip_tokenizer(folder: Path, context_length: int) -> CLIPTokenizer:
    """open_clip's byte-pair vocabulary as a transformers ``CLIPTokenizer`` (vocab.json + merges.txt)."""
    tok = SimpleTokenizer()
    vocab = {
        {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}.get(k, k): v
        for k, v in tok.encoder.items()
    }
    with gzip.open(default_bpe(), "rt", encoding="utf-8") as fh:
        merges = fh.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        pad_token="<|endoftext|>",
        model_max_length=context_length,
    )
