"""ViLT VQA (``ViltForQuestionAnswering``), e.g. dandelin/vilt-b32-finetuned-vqa: a classifier over answers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from PIL import Image
from transformers import ViltForQuestionAnswering

from registry.families.vqa import Answer, VQAModel


class ViltVQA(VQAModel):
    family: ClassVar[str] = "vilt-vqa"
    model_class = ViltForQuestionAnswering

    def answer(self, images: Sequence[Image.Image], questions: Sequence[str], max_new_tokens: int = 10) -> list[Answer]:
        with self.running():
            inputs = self.inputs(images=list(images), text=list(questions), padding=True, truncation=True)
            probs = self.model(**inputs).logits.float().sigmoid()
        best = probs.argmax(dim=-1).tolist()
        labels = self.model.config.id2label
        return [Answer(str(labels[k]), float(probs[i, k])) for i, k in enumerate(best)]
