"""Train a tiny ViLT VQA classifier on the toy world, so that VQA answers can be checked for meaning.

Questions are the toy world's own ("what colour is the star?", "what shape is the red object?",
"how many objects are there?", "is there a blue circle?"); answers are a closed set, as in ViLT.
Binary cross-entropy on one-hot targets, as ViLT itself is trained (the family scores with a sigmoid).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers as T

from infra.local_tokenizers import bert_tokenizer
from infra.toyworld import COLOURS, COUNT_WORDS, SHAPES, Split, ToySample, ToyWorld
from registry.families.vilt_vqa import ViltVQA

ANSWERS = [*COLOURS, *SHAPES, *COUNT_WORDS[1:], "yes", "no"]


@dataclass(frozen=True)
class ToyVQAConfig:
    seed: int = 0
    n_images: int = 3000
    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    image_size: int = 64
    patch_size: int = 8
    hidden: int = 96
    layers: int = 3


def build_toy_vilt(config: ToyVQAConfig, folder: Path) -> ViltVQA:
    torch.manual_seed(config.seed)
    tok = bert_tokenizer(folder)
    cfg = T.ViltConfig(
        vocab_size=len(tok),
        hidden_size=config.hidden,
        num_hidden_layers=config.layers,
        num_attention_heads=4,
        intermediate_size=config.hidden * 4,
        max_position_embeddings=40,
        image_size=config.image_size,
        patch_size=config.patch_size,
        max_image_length=-1,
        num_labels=len(ANSWERS),
        id2label=dict(enumerate(ANSWERS)),
        label2id={a: i for i, a in enumerate(ANSWERS)},
    )
    size = {"shortest_edge": config.image_size}
    image_proc = T.ViltImageProcessor(size=size, size_divisor=config.patch_size, do_pad=True)
    processor = T.ViltProcessor(image_processor=image_proc, tokenizer=tok)
    return ViltVQA(T.ViltForQuestionAnswering(cfg), processor, "vlmops toy ViLT")


def qa_pairs(samples: Sequence[ToySample]) -> list[tuple[int, str, str]]:
    return [(i, qa.question, qa.answer) for i, s in enumerate(samples) for qa in s.qa]


def vqa_accuracy(model: ViltVQA, samples: Sequence[ToySample], kind: str = "what colour") -> float:
    pairs = [(i, q, a) for i, q, a in qa_pairs(samples) if q.startswith(kind)]
    correct = 0
    for start in range(0, len(pairs), 64):
        chunk = pairs[start : start + 64]
        answers = model.answer([samples[i].image for i, _, _ in chunk], [q for _, q, _ in chunk])
        correct += sum(ans.answer == a for ans, (_, _, a) in zip(answers, chunk, strict=True))
    return correct / max(1, len(pairs))


def train_toy_vilt(
    config: ToyVQAConfig = ToyVQAConfig(), progress: Callable[[int, int, float], None] | None = None
) -> tuple[ViltVQA, dict[str, float]]:
    world = ToyWorld(seed=config.seed)
    samples = list(world.samples(config.n_images, Split.TRAIN))
    with tempfile.TemporaryDirectory() as tmp:
        model = build_toy_vilt(config, Path(tmp))
    proc = model.processor
    pixels = proc.image_processor([s.image for s in samples], return_tensors="pt")
    pairs = qa_pairs(samples)
    questions = proc.tokenizer([q for _, q, _ in pairs], padding=True, return_tensors="pt")
    image_idx = torch.tensor([i for i, _, _ in pairs])
    targets = torch.tensor([ANSWERS.index(a) for _, _, a in pairs])
    gen = torch.Generator().manual_seed(config.seed)
    net = model.model.train()
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=0.01)
    loss_value = float("nan")
    for step in range(config.steps):
        for group in opt.param_groups:
            group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        idx = torch.randint(len(pairs), (config.batch_size,), generator=gen)
        img = image_idx[idx]
        logits = net(
            input_ids=questions["input_ids"][idx],
            attention_mask=questions["attention_mask"][idx],
            token_type_ids=questions["token_type_ids"][idx],
            pixel_values=pixels["pixel_values"][img],
            pixel_mask=pixels["pixel_mask"][img],
        ).logits
        loss = F.binary_cross_entropy_with_logits(logits, F.one_hot(targets[idx], len(ANSWERS)).float()) * len(
            ANSWERS
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
        if progress is not None:
            progress(step + 1, config.steps, loss_value)
    net.eval()
    held_out = list(world.samples(300, Split.TEST))
    metrics = {
        "final_loss": loss_value,
        "colour_question_acc": vqa_accuracy(model, held_out, "what colour"),
        "count_question_acc": vqa_accuracy(model, held_out, "how many"),
    }
    return model, metrics
