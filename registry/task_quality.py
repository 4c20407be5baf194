"""Whether a caption, an answer or a box is right: the figures of the task models, computed from whatever
produced the outputs (a model in this process, or a running service reached by its client).

- captioning: ``caption_word_acc``, the share of the reference caption's words found in the generated
  one; on the toy world also ``caption_named``, the share of captions naming every object (colour and
  shape);
- VQA: exact answers, overall (``vqa_acc``) and per kind of question;
- grounding: the top box for each present object's label has IoU ≥ 0.5 with its box
  (``grounding_recall_at_iou50``); the best score of a label absent from the image is under the
  threshold (``grounding_absent_rejected``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from infra.clients import TaskClient
from infra.images import encode_png
from infra.toyworld import COLOURS, QA, SHAPES, Box, Domain, Split, ToySample, ToyWorld, class_labels

_PAIR = re.compile(rf"\b({'|'.join(COLOURS)})\s+({'|'.join(SHAPES)})\b")
_WORD = re.compile(r"[a-z]+")
IOU_HIT = 0.5
TASK_OF_FAMILY = {
    "blip-caption": "captioning",
    "git-caption": "captioning",
    "blip-vqa": "vqa",
    "vilt-vqa": "vqa",
    "owlvit": "grounding",
    "owlv2": "grounding",
}
HELD_OUT_START = 50_000  # test-split indices of the task reports (the CLIP tests use lower ones)


@dataclass(frozen=True)
class Example:
    """One held-out image with what is true of it: a caption, questions with answers, labelled boxes."""

    image: Image.Image
    caption: str
    qa: tuple[QA, ...]
    objects: tuple[tuple[str, Box], ...]

    @classmethod
    def of(cls, sample: ToySample) -> Example:
        return cls(sample.image, sample.caption, sample.qa, tuple((o.label, o.box) for o in sample.objects))


def held_out(n: int, n_objects: int | None, domain: Domain = Domain.PLAIN, seed: int = 0) -> list[Example]:
    """``n`` test-split toy images with ``n_objects`` objects each (``None``: 2 or 3)."""
    world = ToyWorld(seed=seed)
    if n_objects is not None:
        start = HELD_OUT_START + n_objects * 10_000
        return [Example.of(s) for s in world.samples(n, Split.TEST, domain, n_objects=n_objects, start=start)]
    return [
        Example.of(world.sample(HELD_OUT_START + 40_000 + i, Split.TEST, domain, n_objects=2 + i % 2)) for i in range(n)
    ]


# ------------------------------------------------------------------ captioning
def named_objects(caption: str) -> set[tuple[str, str]]:
    """The (colour, shape) pairs a caption names."""
    return {(m.group(1), m.group(2)) for m in _PAIR.finditer(caption.lower())}


def all_named(example: Example, caption: str) -> bool | None:
    """Every object named by its colour and shape (``None`` where the labels are not toy classes)."""
    truth = [named_objects(label) for label, _ in example.objects]
    if not truth or any(len(t) != 1 for t in truth):
        return None
    return set().union(*truth) <= named_objects(caption)


def word_acc(reference: str, caption: str) -> float:
    truth = _WORD.findall(reference.lower())
    said = set(_WORD.findall(caption.lower()))
    return sum(w in said for w in truth) / len(truth) if truth else 0.0


def caption_figures(examples: Sequence[Example], captions: Sequence[str]) -> dict[str, float]:
    pairs = list(zip(examples, captions, strict=True))
    named = [all_named(e, c) for e, c in pairs]
    out = {"caption_word_acc": sum(word_acc(e.caption, c) for e, c in pairs) / len(pairs)}
    if all(n is not None for n in named):
        out["caption_named"] = rate([bool(n) for n in named])
    return out


# ------------------------------------------------------------------ VQA
def question_kind(question: str) -> str:
    for kind in ("colour", "shape"):
        if question.startswith(f"what {kind}"):
            return kind
    return "count" if question.startswith("how many") else "other"


def questions(examples: Sequence[Example]) -> list[tuple[int, str, str]]:
    """(example index, question, true answer) of every question of every example."""
    return [(i, qa.question, qa.answer) for i, e in enumerate(examples) for qa in e.qa]


def vqa_figures(examples: Sequence[Example], answers: Sequence[str]) -> dict[str, float]:
    """Accuracy overall and per kind of question, ``answers`` in the order of :func:`questions`."""
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for (_, question, truth), answer in zip(questions(examples), answers, strict=True):
        by_kind[question_kind(question)].append(answer.strip().lower() == truth.strip().lower())
    out = {"vqa_acc": rate([f for flags in by_kind.values() for f in flags])}
    return out | {f"vqa_acc_{kind}": rate(flags) for kind, flags in sorted(by_kind.items())}


# ------------------------------------------------------------------ grounding
def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def absent_label(example: Example) -> str | None:
    """A toy class of no object in the image, the same for the same image (``None`` off the toy world)."""
    present = {label for label, _ in example.objects}
    labels = [lab for lab in class_labels() if lab not in present]
    if len(labels) == len(class_labels()):
        return None
    return labels[int(sum(b[0] + 3 * b[1] for _, b in example.objects)) % len(labels)]


@dataclass(frozen=True)
class Best:
    """The best box a grounder gave for one query, and its score (``None``: nothing came back)."""

    box: tuple[float, float, float, float] | None
    score: float | None


def grounding_queries(examples: Sequence[Example]) -> list[list[str]]:
    """Per example: each object's label, then one absent toy class where there is one."""
    out = []
    for e in examples:
        absent = absent_label(e)
        out.append([label for label, _ in e.objects] + ([absent] if absent else []))
    return out


def grounding_figures(
    examples: Sequence[Example], best: Sequence[Sequence[Best]], threshold: float
) -> dict[str, float]:
    """``best``: per example, per query of :func:`grounding_queries`, the top detection."""
    hits, ious, rejected = [], [], []
    for e, found in zip(examples, best, strict=True):
        for (_, box), det in zip(e.objects, found, strict=False):
            value = iou(det.box, box) if det.box is not None else 0.0
            ious.append(value)
            hits.append(value >= IOU_HIT)
        if len(found) > len(e.objects):
            absent = found[len(e.objects)]
            rejected.append(absent.score is None or absent.score < threshold)
    out = {"grounding_recall_at_iou50": rate(hits), "grounding_mean_iou": sum(ious) / max(1, len(ious))}
    return out | ({"grounding_absent_rejected": rate(rejected)} if rejected else {})


def rate(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


# ------------------------------------------------------------------ runners
CaptionFn = Callable[[Sequence[Image.Image]], list[str]]
AnswerFn = Callable[[Sequence[Image.Image], Sequence[str]], list[str]]
GroundFn = Callable[[Sequence[Image.Image], Sequence[Sequence[str]]], list[list[Best]]]


def in_chunks(examples: Sequence[Example], size: int, run: Callable[[Sequence[Example]], list]) -> list:
    out: list = []
    for start in range(0, len(examples), size):
        out += run(examples[start : start + size])
    return out


def score_captions(caption: CaptionFn, examples: Sequence[Example], chunk: int = 32) -> dict[str, float]:
    return caption_figures(examples, in_chunks(examples, chunk, lambda ex: caption([e.image for e in ex])))


def score_answers(answer: AnswerFn, examples: Sequence[Example], chunk: int = 64) -> dict[str, float]:
    items = questions(examples)
    out: list[str] = []
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        out += answer([examples[i].image for i, _, _ in part], [q for _, q, _ in part])
    return vqa_figures(examples, out)


def score_grounding(
    ground: GroundFn, examples: Sequence[Example], threshold: float, chunk: int = 32
) -> dict[str, float]:
    queries = grounding_queries(examples)
    best: list[list[Best]] = []
    for start in range(0, len(examples), chunk):
        part = examples[start : start + chunk]
        best += ground([e.image for e in part], queries[start : start + chunk])
    return grounding_figures(examples, best, threshold)


# ------------------------------------------------------------------ through a running service
def service_caption(client: TaskClient) -> CaptionFn:
    return lambda images: [str(o["caption"]) for o in client.caption([encode_png(im) for im in images])]


def service_answer(client: TaskClient) -> AnswerFn:
    return lambda images, qs: [str(o["answer"]) for o in client.answer([encode_png(im) for im in images], qs)]


def best_per_query(queries: Sequence[str], detections: Sequence[dict]) -> list[Best]:
    """The top detection of each query in a service's answer (sorted by score, best first)."""
    top: dict[str, Best] = {}
    for d in detections:
        top.setdefault(str(d["query"]), Best(tuple(d["box"]), float(d["score"])))  # type: ignore[arg-type]
    return [top.get(q, Best(None, None)) for q in queries]


def service_ground(client: TaskClient) -> GroundFn:
    """Asks with threshold 0, so that every query comes back with its best score."""

    def ground(images: Sequence[Image.Image], queries: Sequence[Sequence[str]]) -> list[list[Best]]:
        outs = client.ground([encode_png(im) for im in images], queries, threshold=0.0)
        return [best_per_query(q, o["detections"]) for q, o in zip(queries, outs, strict=True)]

    return ground


# ------------------------------------------------------------------ acceptance
ACCEPTANCE: dict[str, float] = {
    "caption_named_single": 0.9,
    "caption_named_multi": 0.7,
    "vqa_acc_colour_single": 0.9,
    "vqa_acc_shape_single": 0.9,
    "vqa_acc_count_single": 0.8,
    "vqa_acc_colour_multi": 0.9,
    "vqa_acc_shape_multi": 0.9,
    "vqa_acc_count_multi": 0.8,
    "grounding_recall_at_iou50_single": 0.9,
    "grounding_recall_at_iou50_multi": 0.7,
    "grounding_absent_rejected_single": 0.8,
    "grounding_absent_rejected_multi": 0.8,
}


def failed_acceptance(figures: dict[str, float], prefix: str = "") -> dict[str, tuple[float, float]]:
    """The figures (of the metrics starting with ``prefix``) under their acceptance threshold: name -> (got,
    needed)."""
    return {
        name: (figures.get(name, float("nan")), bar)
        for name, bar in ACCEPTANCE.items()
        if name.startswith(prefix) and not figures.get(name, float("nan")) >= bar
    }
