"""Evaluation of CLIP versions on a held-out pair dataset: retrieval both ways and zero-shot accuracy.

Text→image: every distinct caption is a query; the relevant images are those paired with it.
Image→text: every image is a query over the distinct captions; the relevant one is its own caption.
Recall@K, Precision@K and R-Precision come from torchmetrics' retrieval metrics, overall and per
class (the label of the query's pairs), plus zero-shot accuracy over the dataset's class labels.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchmetrics.retrieval import RetrievalPrecision, RetrievalRecall, RetrievalRPrecision

from registry.datasets import PairDataset
from registry.families.clip import ClipModel

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EvalReport:
        return cls(**json.loads(text))


def _retrieval(preds: torch.Tensor, target: torch.Tensor, ks: Sequence[int], prefix: str) -> dict[str, float]:
    """Metrics for a [queries, docs] score matrix and its boolean relevance matrix."""
    n_q, n_d = preds.shape
    indexes = torch.arange(n_q).repeat_interleave(n_d)
    flat_p, flat_t = preds.reshape(-1), target.reshape(-1)
    out: dict[str, float] = {}
    for k in ks:
        out[f"{prefix}_recall@{k}"] = float(RetrievalRecall(top_k=k)(flat_p, flat_t, indexes=indexes))
        out[f"{prefix}_precision@{k}"] = float(RetrievalPrecision(top_k=k)(flat_p, flat_t, indexes=indexes))
    out[f"{prefix}_r_precision"] = float(RetrievalRPrecision()(flat_p, flat_t, indexes=indexes))
    return out


def _encode_images(model: ClipModel, data: PairDataset) -> torch.Tensor:
    return torch.cat([model.encode_images(list(data.images[s : s + CHUNK])).cpu() for s in range(0, len(data), CHUNK)])


def _encode_texts(model: ClipModel, texts: Sequence[str]) -> torch.Tensor:
    return torch.cat([model.encode_text(list(texts[s : s + CHUNK]))[0].cpu() for s in range(0, len(texts), CHUNK)])


def evaluate(model: ClipModel, data: PairDataset, name: str = "model", ks: Sequence[int] = DEFAULT_KS) -> EvalReport:
    """Score ``model`` on ``data`` (the same set for every version compared)."""
    captions = sorted(set(data.captions))
    cap_index = {c: i for i, c in enumerate(captions)}
    img_cap = torch.tensor([cap_index[c] for c in data.captions])
    img = _encode_images(model, data)
    txt = _encode_texts(model, captions)
    sims = img @ txt.T  # [images, captions]
    relevant = img_cap[:, None] == torch.arange(len(captions))[None, :]
    ks = [k for k in ks if k <= max(len(captions), len(data))]
    metrics = _retrieval(sims.T, relevant.T, ks, "t2i") | _retrieval(sims, relevant, ks, "i2t")

    per_class: dict[str, dict[str, float]] = {}
    labels = [r.label for r in data.rows]
    label_set = sorted({lb for lb in labels if lb is not None})
    if label_set:
        labelled = torch.tensor([lb is not None for lb in labels])
        label_emb = model.label_embeddings(label_set).cpu()
        pred = (img[labelled] @ label_emb.T).argmax(dim=1)
        truth = torch.tensor([label_set.index(lb) for lb in labels if lb is not None])
        metrics["zero_shot_acc"] = float((pred == truth).float().mean())
        caption_label = {c: lb for c, lb in zip(data.captions, labels, strict=True)}
        for cls in label_set:
            img_rows = torch.tensor([lb == cls for lb in labels])
            cap_rows = torch.tensor([caption_label[c] == cls for c in captions])
            row = _retrieval(sims.T[cap_rows], relevant.T[cap_rows], ks, "t2i")
            row |= _retrieval(sims[img_rows], relevant[img_rows], ks, "i2t")
            mask = truth == label_set.index(cls)
            row["zero_shot_acc"] = float((pred[mask] == truth[mask]).float().mean())
            row["n_images"] = float(int(img_rows.sum()))
            per_class[cls] = row
    return EvalReport(name, data.source, data.content_hash, len(data), len(captions), metrics, per_class)


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
