"""Scoring captioning, VQA and grounding versions (``vlmops eval`` and the promotion gate for task models),
and their held-out toy figures at registration.

A task dataset is a JSONL file whose rows hold an ``image`` and any of a ``caption``, ``qa`` (a list of
``{question, answer}``) and ``objects`` (a list of ``{label, box: [x0, y0, x1, y1]}`` in pixels):
``vlmops datasets toy --tasks`` writes one. Each family is scored on what the rows give it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from infra.errors import InvalidInput, NotFound
from infra.images import decode_image
from infra.toyworld import QA, Domain
from registry.datasets import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from registry.families.captioning import Captioner
from registry.families.grounding import DEFAULT_THRESHOLD, Grounder
from registry.families.hf import HFModel
from registry.families.vqa import VQAModel
from registry.task_quality import (
    TASK_OF_FAMILY,
    Best,
    Example,
    best_per_query,
    held_out,
    score_answers,
    score_captions,
    score_grounding,
)

TOY_SETS = {"single": 1, "multi": None}


def task_of(family: str) -> str | None:
    return TASK_OF_FAMILY.get(family)


def model_ground(model: Grounder, images: Sequence, queries: Sequence[Sequence[str]]) -> list[list[Best]]:
    """Per image, per query: the model's top box for it (threshold 0, so that every query gets its best score)."""
    found = model.detect(list(images), [list(q) for q in queries], threshold=0.0)
    return [best_per_query(qs, [asdict(d) for d in dets]) for qs, dets in zip(queries, found, strict=True)]


def score_model(model: HFModel, examples: Sequence[Example], threshold: float = DEFAULT_THRESHOLD) -> dict[str, float]:
    """The figures of ``model``'s task on ``examples``, computed in this process."""
    with_qa = [e for e in examples if e.qa]
    with_boxes = [e for e in examples if e.objects]
    if isinstance(model, Captioner):
        return score_captions(model.caption, [e for e in examples if e.caption])
    if isinstance(model, VQAModel):
        if not with_qa:
            raise InvalidInput("no row of the dataset has questions ('qa'): nothing to score a VQA model on")
        return score_answers(lambda ims, qs: [a.answer for a in model.answer(ims, qs)], with_qa)
    if isinstance(model, Grounder):
        if not with_boxes:
            raise InvalidInput("no row of the dataset has boxes ('objects'): nothing to score a grounding model on")
        return score_grounding(lambda ims, qs: model_ground(model, ims, qs), with_boxes, threshold)
    raise InvalidInput(f"{type(model).__name__} is not a captioning, VQA or grounding model")


def toy_figures(model: HFModel, n: int = 200, seed: int = 0) -> dict[str, float]:
    """Held-out toy figures: single-object and 2–3-object images, plain and shifted domains
    (``caption_named_multi``, ``vqa_acc_colour_single_shifted``, ...)."""
    out: dict[str, float] = {}
    for domain in Domain:
        for name, n_objects in TOY_SETS.items():
            suffix = name if domain is Domain.PLAIN else f"{name}_{domain}"
            figures = score_model(model, held_out(n, n_objects, domain, seed))
            out |= {f"{k}_{suffix}": v for k, v in figures.items()}
    return out


def _example(obj: dict, base: Path, line: int) -> Example:
    if not isinstance(obj, dict) or "image" not in obj:
        raise InvalidInput(f"line {line}: no 'image' field")
    path = Path(str(obj["image"]))
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise InvalidInput(f"line {line}: image {obj['image']!r} not found")
    image = decode_image(
        path.read_bytes(), max_bytes=MAX_IMAGE_BYTES, max_pixels=MAX_IMAGE_PIXELS, what=str(obj["image"])
    )
    try:
        qa = tuple(QA(str(q["question"]), str(q["answer"])) for q in obj.get("qa", []))
        boxes = tuple((str(o["label"]), tuple(float(v) for v in o["box"])) for o in obj.get("objects", []))
    except (KeyError, TypeError) as exc:
        raise InvalidInput(f"line {line}: 'qa' holds {{question, answer}} and 'objects' {{label, box}}: {exc}") from exc
    if any(len(b) != 4 for _, b in boxes):
        raise InvalidInput(f"line {line}: a box is [x0, y0, x1, y1]")
    return Example(image, str(obj.get("caption") or ""), qa, boxes)  # type: ignore[arg-type]


def load_examples(source: str | Path) -> tuple[list[Example], str]:
    """The rows of a task dataset (JSONL), and its content hash."""
    path = Path(source)
    if not path.is_file():
        raise NotFound(f"no task dataset at {source} (a .jsonl file)")
    if path.suffix.lower() != ".jsonl":
        raise InvalidInput(f"{source}: a task dataset is a .jsonl file with image, caption, qa and objects")
    digest = hashlib.sha256()
    examples = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"line {i}: not JSON ({exc.msg})") from exc
        examples.append(_example(obj, path.parent, i))
        digest.update(line.encode())
    if not examples:
        raise InvalidInput(f"{source}: no rows")
    return examples, digest.hexdigest()
