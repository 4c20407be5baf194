"""Tiny random-config transformers models with processors built locally: nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import transformers as T

from infra.local_tokenizers import WORDS, bert_tokenizer, clip_tokenizer

__all__ = ["WORDS", "blip_caption", "blip_vqa", "git_caption", "owl", "vilt_vqa"]

VISION = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
TEXT = {**VISION, "max_position_embeddings": 64}


def _text_cfg(tok: T.PreTrainedTokenizerBase) -> dict[str, int]:
    return {**TEXT, "vocab_size": len(tok)}


def blip_caption(folder: Path) -> tuple[T.PreTrainedModel, T.ProcessorMixin]:
    tok = bert_tokenizer(folder / "tok")
    ids = {"bos_token_id": tok.bos_token_id, "pad_token_id": 0, "sep_token_id": 3, "eos_token_id": 3}
    cfg = T.BlipConfig(
        vision_config={**VISION, "image_size": 32, "patch_size": 8}, text_config={**_text_cfg(tok), **ids}
    )
    proc = T.BlipProcessor(image_processor=T.BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
    return T.BlipForConditionalGeneration(cfg), proc


def blip_vqa(folder: Path) -> tuple[T.PreTrainedModel, T.ProcessorMixin]:
    model, proc = blip_caption(folder)
    return T.BlipForQuestionAnswering(model.config), proc


def git_caption(folder: Path) -> tuple[T.PreTrainedModel, T.ProcessorMixin]:
    tok = bert_tokenizer(folder / "tok")
    cfg = T.GitConfig(
        vision_config={**VISION, "image_size": 32, "patch_size": 8},
        **_text_cfg(tok),
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    image_proc = T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return T.GitForCausalLM(cfg), T.GitProcessor(image_processor=image_proc, tokenizer=tok)


def vilt_vqa(folder: Path, answers: list[str]) -> tuple[T.PreTrainedModel, T.ProcessorMixin]:
    tok = bert_tokenizer(folder / "tok")
    cfg = T.ViltConfig(
        **{k: v for k, v in _text_cfg(tok).items() if k != "max_position_embeddings"},
        max_position_embeddings=40,
        image_size=32,
        patch_size=8,
        max_image_length=-1,
        num_labels=len(answers),
        id2label=dict(enumerate(answers)),
        label2id={a: i for i, a in enumerate(answers)},
    )
    image_proc = T.ViltImageProcessor(size={"shortest_edge": 32}, size_divisor=8, do_pad=True)
    return T.ViltForQuestionAnswering(cfg), T.ViltProcessor(image_processor=image_proc, tokenizer=tok)


def owl(folder: Path, v2: bool = False) -> tuple[T.PreTrainedModel, T.ProcessorMixin]:
    tok = clip_tokenizer(folder / "tok")
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    text = {**_text_cfg(tok), "max_position_embeddings": 16, **ids}
    vision = {**VISION, "image_size": 32, "patch_size": 8}
    if v2:
        cfg = T.Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)
        image_proc = T.Owlv2ImageProcessor(size={"height": 32, "width": 32})
        return T.Owlv2ForObjectDetection(cfg), T.Owlv2Processor(image_processor=image_proc, tokenizer=tok)
    cfg = T.OwlViTConfig(text_config=text, vision_config=vision, projection_dim=32)
    image_proc = T.OwlViTImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32})
    return T.OwlViTForObjectDetection(cfg), T.OwlViTProcessor(image_processor=image_proc, tokenizer=tok)
