"""The grounder's training loss: the batch's costs computed at once must pair each object with the patch the
per-image Hungarian matching picks, and the loss must reward the right boxes."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou

from registry.families.grounding_loss import LossWeights, Target, grounding_loss, match_batch, pairwise_giou


def _batch(seed: int, patches: int = 16, queries: int = 6) -> tuple[torch.Tensor, torch.Tensor, list[Target]]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(5, patches, queries, generator=gen)
    boxes = torch.cat(
        [torch.rand(5, patches, 2, generator=gen), 0.05 + 0.3 * torch.rand(5, patches, 2, generator=gen)], -1
    )
    targets = []
    for n in (1, 3, 0, 2, 3):  # an image with no object too
        centre = torch.rand(n, 2, generator=gen)
        size = 0.1 + 0.2 * torch.rand(n, 2, generator=gen)
        targets.append(Target(torch.randint(queries, (n,), generator=gen), torch.cat([centre, size], -1)))
    return logits, boxes, targets


def _reference_match(logits: torch.Tensor, boxes: torch.Tensor, target: Target, w: LossWeights) -> tuple[list, list]:
    """One image at a time, with torchvision's GIoU table (the matching as first written)."""
    if target.labels.numel() == 0:
        return [], []
    corners = box_convert(boxes, "cxcywh", "xyxy")
    cost = (
        -w.cls * logits[:, target.labels].sigmoid()
        + w.l1 * torch.cdist(boxes, target.boxes, p=1)
        - w.giou * generalized_box_iou(corners, box_convert(target.boxes, "cxcywh", "xyxy"))
    )
    rows, cols = linear_sum_assignment(cost.numpy())
    return rows.tolist(), cols.tolist()


def test_pairwise_giou_equals_torchvisions_table() -> None:
    gen = torch.Generator().manual_seed(0)
    a = box_convert(torch.cat([torch.rand(7, 2, generator=gen), torch.rand(7, 2, generator=gen)], -1), "cxcywh", "xyxy")
    b = box_convert(torch.cat([torch.rand(4, 2, generator=gen), torch.rand(4, 2, generator=gen)], -1), "cxcywh", "xyxy")
    assert torch.equal(pairwise_giou(a[:, None], b[None]), generalized_box_iou(a, b))
    assert torch.allclose(pairwise_giou(a, a), torch.ones(7))
    far = torch.tensor([[0.0, 0.0, 0.1, 0.1]]), torch.tensor([[0.9, 0.9, 1.0, 1.0]])
    assert pairwise_giou(*far).item() < -0.9  # disjoint and far apart: close to -1


def test_batched_matching_pairs_as_the_per_image_matching() -> None:
    w = LossWeights()
    for seed in range(5):
        logits, boxes, targets = _batch(seed)
        got = match_batch(logits, boxes, targets, w)
        want = [_reference_match(logits[b], boxes[b], t, w) for b, t in enumerate(targets)]
        assert got == want


def test_loss_is_lower_for_boxes_on_the_objects() -> None:
    logits, boxes, targets = _batch(1)
    loss_random, _ = grounding_loss(logits, boxes, targets)
    on_target = boxes.clone()
    hot = torch.full_like(logits, -8.0)
    for b, target in enumerate(targets):  # the first patches predict the objects, with their labels
        on_target[b, : len(target.labels)] = target.boxes
        hot[b, torch.arange(len(target.labels)), target.labels] = 8.0
    loss_right, terms = grounding_loss(hot, on_target, targets)
    assert terms["l1"] < 1e-6 and terms["giou"] < 1e-5
    assert loss_right.item() < 0.05 * loss_random.item()
    logits.requires_grad_(True)
    boxes.requires_grad_(True)
    loss, _ = grounding_loss(logits, boxes, targets)
    loss.backward()
    assert boxes.grad is not None and boxes.grad[2].abs().sum() == 0  # the image with no object: no box term
    assert torch.isfinite(logits.grad).all() and logits.grad[2].abs().sum() > 0  # but its patches are negatives
    empty = [Target(torch.zeros(0, dtype=torch.long), torch.zeros(0, 4))] * 5
    none_loss, none_terms = grounding_loss(logits, boxes, empty)  # no object anywhere: only negatives
    assert none_terms["l1"] == 0 and none_loss.item() > 0
