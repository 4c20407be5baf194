"""Open-vocabulary grounding (image + text queries → boxes): what every grounding family shares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.ops import batched_nms

from registry.families.base import DEFAULT_THRESHOLD
from registry.families.hf import HFModel

__all__ = ["DEFAULT_THRESHOLD", "Detection", "Grounder"]


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # [x0, y0, x1, y1] in pixels of the input image
    score: float
    query: str


class Grounder(HFModel):
    # OWLv2 pads images to a square before it predicts: boxes come back relative to that square
    square_padding: bool = False

    def detect(
        self,
        images: Sequence[Image.Image],
        queries: Sequence[Sequence[str]],
        threshold: float = DEFAULT_THRESHOLD,
        nms_iou: float = 0.3,
    ) -> list[list[Detection]]:
        """Per image: boxes matching its queries, score ≥ threshold, per-query NMS, sorted by score."""
        with self.running():
            texts = [list(q) for q in queries]
            inputs = self.inputs(text=texts, images=list(images), padding="max_length", truncation=True)
            outputs = self.model(**inputs)
        sizes = [(im.height, im.width) for im in images]
        targets = torch.tensor([(max(s), max(s)) if self.square_padding else s for s in sizes], dtype=torch.float32)
        results = self.processor.post_process_grounded_object_detection(
            outputs=outputs, target_sizes=targets, threshold=threshold
        )
        return [self._finish(r, q, size, nms_iou) for r, q, size in zip(results, queries, sizes, strict=True)]

    @staticmethod
    def _finish(result: dict, queries: Sequence[str], size: tuple[int, int], nms_iou: float) -> list[Detection]:
        boxes = result["boxes"].float().cpu()
        scores = result["scores"].float().cpu()
        labels = result["labels"].cpu()
        real = labels < len(queries)  # queries are padded to the longest list of the batch
        boxes, scores, labels = boxes[real], scores[real], labels[real]
        if boxes.numel() == 0:
            return []
        height, width = size
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        keep = batched_nms(boxes, scores, labels, nms_iou)  # sorted by score, highest first
        return [
            Detection(tuple(round(float(v), 2) for v in boxes[k]), float(scores[k]), queries[int(labels[k])])
            for k in keep.tolist()
        ]
