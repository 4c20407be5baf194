"""The training loss transformers does not ship for OWL-ViT / OWLv2: set matching, then a sigmoid focal
term over every (patch, query) pair and L1 + GIoU terms over the matched boxes (as in DETR and OWL-ViT).

Each patch predicts one box and a logit per query. Per image, the Hungarian algorithm pairs every true
object with one patch, at a cost mixing its class probability, L1 and GIoU; the paired patches are
positives for their object's query, every other (patch, query) pair is a negative.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss


@dataclass(frozen=True)
class Target:
    """One image's objects: query index and box (cx, cy, w, h, normalised to 0–1) of each."""

    labels: torch.Tensor  # (n,) long
    boxes: torch.Tensor  # (n, 4) float


@dataclass(frozen=True)
class LossWeights:
    cls: float = 2.0
    l1: float = 5.0
    giou: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


def _corners(boxes: torch.Tensor) -> torch.Tensor:
    return box_convert(boxes, "cxcywh", "xyxy")


@torch.no_grad()
def match(logits: torch.Tensor, boxes: torch.Tensor, target: Target, w: LossWeights) -> tuple[list[int], list[int]]:
    """(patch indices, object indices) of the cheapest one-to-one pairing for one image."""
    if target.labels.numel() == 0:
        return [], []
    prob = logits[:, target.labels].sigmoid()  # (P, n)
    cost = (
        -w.cls * prob
        + w.l1 * torch.cdist(boxes, target.boxes, p=1)
        - w.giou * generalized_box_iou(_corners(boxes), _corners(target.boxes))
    )
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return rows.tolist(), cols.tolist()


def grounding_loss(
    logits: torch.Tensor, boxes: torch.Tensor, targets: Sequence[Target], w: LossWeights = LossWeights()
) -> tuple[torch.Tensor, dict[str, float]]:
    """``logits`` (B, P, Q) and ``boxes`` (B, P, 4, cxcywh) of a batch; returns the loss and its terms."""
    onehot = torch.zeros_like(logits)
    matched_pred, matched_true = [], []
    for b, target in enumerate(targets):
        rows, cols = match(logits[b].detach(), boxes[b].detach(), target, w)
        onehot[b, rows, target.labels[cols]] = 1.0
        matched_pred.append(boxes[b, rows])
        matched_true.append(target.boxes[cols])
    n_obj = max(1, sum(len(t.labels) for t in targets))
    focal = sigmoid_focal_loss(logits, onehot, alpha=w.focal_alpha, gamma=w.focal_gamma, reduction="sum") / n_obj
    pred, true = torch.cat(matched_pred), torch.cat(matched_true)
    l1 = F.l1_loss(pred, true, reduction="sum") / n_obj
    giou = (1 - torch.diag(generalized_box_iou(_corners(pred), _corners(true)))).sum() / n_obj
    loss = w.cls * focal + w.l1 * l1 + w.giou * giou
    return loss, {"focal": float(focal.detach()), "l1": float(l1.detach()), "giou": float(giou.detach())}
