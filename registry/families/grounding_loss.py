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
from torchvision.ops import box_convert, sigmoid_focal_loss


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


def pairwise_giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GIoU of corner boxes ``a`` and ``b`` (..., 4), broadcast against each other: the terms and their order
    of ``torchvision.ops.generalized_box_iou``, which gives only an (N, M) table of two lists."""
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    wh = (torch.min(a[..., 2:], b[..., 2:]) - torch.max(a[..., :2], b[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a + area_b - inter
    hull = (torch.max(a[..., 2:], b[..., 2:]) - torch.min(a[..., :2], b[..., :2])).clamp(min=0)
    area_hull = hull[..., 0] * hull[..., 1]
    return inter / union - (area_hull - union) / area_hull


@torch.no_grad()
def match_batch(
    logits: torch.Tensor, boxes: torch.Tensor, targets: Sequence[Target], w: LossWeights
) -> list[tuple[list[int], list[int]]]:
    """Per image, (patch indices, object indices) of the cheapest one-to-one pairing. The costs of the whole
    batch are computed at once (objects padded to the most any image has), then each image is matched."""
    most = max((len(t.labels) for t in targets), default=0)
    if most == 0:
        return [([], []) for _ in targets]
    labels = torch.zeros(len(targets), most, dtype=torch.long)
    true = torch.zeros(len(targets), most, 4, dtype=boxes.dtype)
    true[..., 2:] = 1.0  # padding: a whole-image box, sliced off before matching
    for b, target in enumerate(targets):
        labels[b, : len(target.labels)] = target.labels
        true[b, : len(target.labels)] = target.boxes
    prob = logits.gather(2, labels[:, None, :].expand(-1, logits.shape[1], -1)).sigmoid()  # (B, P, n)
    cost = (
        -w.cls * prob
        + w.l1 * torch.cdist(boxes, true, p=1)
        - w.giou * pairwise_giou(_corners(boxes)[:, :, None], _corners(true)[:, None])
    ).numpy()
    out = []
    for b, target in enumerate(targets):
        rows, cols = linear_sum_assignment(cost[b, :, : len(target.labels)]) if len(target.labels) else ([], [])
        out.append((list(rows), list(cols)))
    return out


def grounding_loss(
    logits: torch.Tensor, boxes: torch.Tensor, targets: Sequence[Target], w: LossWeights = LossWeights()
) -> tuple[torch.Tensor, dict[str, float]]:
    """``logits`` (B, P, Q) and ``boxes`` (B, P, 4, cxcywh) of a batch; returns the loss and its terms."""
    pairs = match_batch(logits.detach(), boxes.detach(), targets, w)
    image = torch.tensor([b for b, (rows, _) in enumerate(pairs) for _ in rows], dtype=torch.long)
    patch = torch.tensor([r for rows, _ in pairs for r in rows], dtype=torch.long)
    obj_label = torch.cat([t.labels[cols] for t, (_, cols) in zip(targets, pairs, strict=True)])
    true = torch.cat([t.boxes[cols] for t, (_, cols) in zip(targets, pairs, strict=True)])
    onehot = torch.zeros_like(logits)
    onehot[image, patch, obj_label] = 1.0
    n_obj = max(1, sum(len(t.labels) for t in targets))
    focal = sigmoid_focal_loss(logits, onehot, alpha=w.focal_alpha, gamma=w.focal_gamma, reduction="sum") / n_obj
    pred = boxes[image, patch]
    l1 = F.l1_loss(pred, true, reduction="sum") / n_obj
    giou = (1 - pairwise_giou(_corners(pred), _corners(true))).sum() / n_obj
    loss = w.cls * focal + w.l1 * l1 + w.giou * giou
    return loss, {"focal": float(focal.detach()), "l1": float(l1.detach()), "giou": float(giou.detach())}
