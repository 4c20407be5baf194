"""Evaluation of CLIP versions on a held-out set: caption retrieval both ways, class queries, zero-shot.

- Text→image: every distinct caption is a query; the relevant images are those paired with it.
- Image→text: every image is a query over the distinct captions; the relevant one is its own caption.
- Class queries (the way curated collections are judged, as in ONiT's table): each class name, run through
  prompt templates and ensembled as ``classify`` does, is a query over *every* image of the set; the
  relevant images are those labelled with the class. ``class_recall@K``, ``class_precision@K`` (any K,
  also past the class size) and ``class_r_precision`` per class and overall: the plain name is the macro
  mean over classes, ``_micro`` the figure pooled over all of them.
- Zero-shot accuracy over the dataset's class labels, overall and per class.

Rows with a label and no caption take part in class queries and zero-shot only; rows with a caption and
no label in caption retrieval only. Each image is embedded once per version; every ranking goes through
:mod:`registry.ranking` in chunks, so memory stays bounded by the embeddings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from registry.datasets import PairDataset
from registry.families.clip import DEFAULT_TEMPLATES, ClipModel
from registry.ranking import chunked_hits, rank_hits

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
DEFAULT_CLASS_KS: tuple[int, ...] = (10, 100)
CLASS_METRICS_STEM = ("class_recall@", "class_precision@", "class_r_precision")
CHUNK = 256


@dataclass
class EvalReport:
    model: str  # name/version, or a description
    dataset: str
    dataset_hash: str
    n_images: int
    n_captions: int
    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    class_ks: list[int] = field(default_factory=list)
    class_queries: list[str] = field(default_factory=list)  # the prompt templates of the class queries

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EvalReport:
        return cls(**json.loads(text))

    def class_metric_names(self) -> list[str]:
        """The per-class metrics of the class queries, in table order: R@K, P@K for each K, R-Precision."""
        names = [f"class_{m}@{k}" for k in self.class_ks for m in ("recall", "precision")]
        return [*names, "class_r_precision"] if self.per_class else []


def _retrieval(preds: torch.Tensor, target: torch.Tensor, ks: Sequence[int], prefix: str) -> dict[str, float]:
    """Metrics (mean over queries) for a [queries, docs] score matrix and its boolean relevance matrix."""
    return rank_hits(preds, target, ks).macro(prefix)


def _encode_images(model: ClipModel, data: PairDataset) -> torch.Tensor:
    return torch.cat([model.encode_images(list(data.images[s : s + CHUNK])).cpu() for s in range(0, len(data), CHUNK)])


def _encode_texts(model: ClipModel, texts: Sequence[str]) -> torch.Tensor:
    return torch.cat([model.encode_text(list(texts[s : s + CHUNK]))[0].cpu() for s in range(0, len(texts), CHUNK)])


def _caption_metrics(
    img: torch.Tensor, txt: torch.Tensor, img_cap: torch.Tensor, ks: Sequence[int]
) -> tuple[dict[str, float], Any, Any]:
    """t2i and i2t over the captioned images; returns the overall figures and the per-query hits of both."""
    caps = torch.arange(len(txt))
    t2i = chunked_hits(txt, img, lambda rows: caps[rows][:, None] == img_cap[None, :], ks)
    i2t = chunked_hits(img, txt, lambda rows: img_cap[rows][:, None] == caps[None, :], ks)
    return t2i.macro("t2i") | i2t.macro("i2t"), t2i, i2t


def evaluate(
    model: ClipModel,
    data: PairDataset,
    name: str = "model",
    ks: Sequence[int] = DEFAULT_KS,
    class_ks: Sequence[int] = DEFAULT_CLASS_KS,
    class_queries: Sequence[str] = DEFAULT_TEMPLATES,
) -> EvalReport:
    """Score ``model`` on ``data`` (the same set for every version compared).

    ``ks`` are the caption-retrieval cut-offs (kept where the set is large enough); ``class_ks`` the class
    queries' (any K); ``class_queries`` the prompt templates every class name is run through."""
    class_ks = sorted(set(class_ks))
    img = _encode_images(model, data)
    metrics: dict[str, float] = {}
    per_class: dict[str, dict[str, float]] = {}
    labels = [r.label for r in data.rows]
    label_set = sorted({lb for lb in labels if lb is not None})

    cap_rows = torch.tensor([bool(r.caption) for r in data.rows], dtype=torch.bool)
    captions = sorted({r.caption for r in data.rows if r.caption})
    if captions:
        cap_index = {c: i for i, c in enumerate(captions)}
        img_cap = torch.tensor([cap_index[r.caption] for r in data.rows if r.caption])
        txt = _encode_texts(model, captions)
        n_docs = max(len(captions), int(cap_rows.sum()))
        cap_ks = [k for k in sorted(set(ks)) if k <= n_docs]
        figures, t2i, i2t = _caption_metrics(img[cap_rows], txt, img_cap, cap_ks)
        metrics |= figures
        caption_label = {r.caption: r.label for r in data.rows if r.caption}
        cap_labels = [r.label for r in data.rows if r.caption]
        for cls in label_set:
            row = per_class.setdefault(cls, {})
            cap_mask = torch.tensor([caption_label[c] == cls for c in captions], dtype=torch.bool)
            img_mask = torch.tensor([lb == cls for lb in cap_labels], dtype=torch.bool)
            if cap_mask.any():
                row |= t2i.select(cap_mask).macro("t2i")
            if img_mask.any():
                row |= i2t.select(img_mask).macro("i2t")

    if label_set:
        label_emb = model.label_embeddings(label_set, tuple(class_queries)).cpu()
        truth = torch.tensor([label_set.index(lb) if lb is not None else -1 for lb in labels])
        classes = torch.arange(len(label_set))
        hits = chunked_hits(label_emb, img, lambda rows: classes[rows][:, None] == truth[None, :], class_ks)
        metrics |= hits.macro("class") | hits.micro("class")
        labelled = truth >= 0
        pred = (img[labelled] @ label_emb.T).argmax(dim=1)
        metrics["zero_shot_acc"] = float((pred == truth[labelled]).float().mean())
        per_query = hits.per_query("class")
        for i, cls in enumerate(label_set):
            mask = truth[labelled] == i
            row = per_class.setdefault(cls, {})
            row.update({k: float(v[i]) for k, v in per_query.items()})
            row["zero_shot_acc"] = float((pred[mask] == i).float().mean())
            row["n_images"] = float(int(mask.sum()))
    return EvalReport(
        name,
        data.source,
        data.content_hash,
        len(data),
        len(captions),
        metrics,
        per_class,
        class_ks if label_set else [],
        list(class_queries) if label_set else [],
    )


def table(reports: Mapping[str, EvalReport], metrics: Sequence[str] | None = None) -> str:
    """A console table: one row per metric, one column per report (and the difference of the first two)."""
    names = list(reports)
    keys = list(metrics or next(iter(reports.values())).metrics)
    width = max(len(k) for k in keys) + 2
    head = f"{'metric':<{width}}" + "".join(f"{n:>16}" for n in names)
    if len(names) == 2:
        head += f"{'diff':>10}"
    lines = [head, "-" * len(head)]
    for key in keys:
        vals = [reports[n].metrics.get(key, float("nan")) for n in names]
        line = f"{key:<{width}}" + "".join(f"{v:>16.4f}" for v in vals)
        if len(vals) == 2:
            line += f"{vals[0] - vals[1]:>+10.4f}"
        lines.append(line)
    return "\n".join(lines)


def plot(reports: Mapping[str, EvalReport], path: Path, metrics: Sequence[str] | None = None) -> Path:
    """A grouped bar chart of the metrics of each report (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(metrics or next(iter(reports.values())).metrics)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(keys)), 4))
    width = 0.8 / max(1, len(reports))
    for i, (name, rep) in enumerate(reports.items()):
        xs = [j + i * width for j in range(len(keys))]
        ax.bar(xs, [rep.metrics.get(k, 0.0) for k in keys], width=width, label=name)
    ax.set_xticks([j + width * (len(reports) - 1) / 2 for j in range(len(keys))], keys, rotation=60, ha="right")
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title("evaluation")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def summary(report: EvalReport) -> dict[str, Any]:
    return {"model": report.model, "dataset_hash": report.dataset_hash, **report.metrics}
