"""Tiny random-config transformers models with processors built locally: nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import transformers as T

from infra.toyworld import COLOURS, COUNT_WORDS, SHAPES

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
WORDS = [*COLOURS, *SHAPES, *COUNT_WORDS, "a", "an", "what", "colour", "is", "the", "shape", "object", "how", "many"]
WORDS += ["objects", "are", "there", "and", "yes", "no", "photo", "of", "?", ","]
VISION = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
TEXT = {**VISION, "max_position_embeddings": 64}


def bert_tokenizer(folder: Path) -> T.BertTokenizer:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(SPECIAL + WORDS) + "\n")
    return T.BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")


def clip_tokenizer(folder: Path) -> T.CLIPTokenizer:
    """A byte-pair vocabulary holding just the toy world's words, merged letter by letter."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    merges: list[str] = []

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    for char in sorted({c for w in WORDS for c in w}):
        add(char)
        add(char + "</w>")
    for word in WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1], *parts[2:]]
            add(parts[0])
    for special in ("<|startoftext|>", "<|endoftext|>"):
        add(special)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    return T.CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>", model_max_length=16
    )


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
