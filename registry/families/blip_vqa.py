"""BLIP VQA (``BlipForQuestionAnswering``), e.g. Salesforce/blip-vqa-base: a generative answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from PIL import Image
from transformers import BlipForQuestionAnswering

from registry.families.vqa import Answer, VQAModel


class BlipVQA(VQAModel):
    family: ClassVar[str] = "blip-vqa"
    model_class = BlipForQuestionAnswering

    def answer(self, images: Sequence[Image.Image], questions: Sequence[str], max_new_tokens: int = 10) -> list[Answer]:
        with self.running():
            inputs = self.inputs(images=list(images), text=list(questions), padding=True)
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return [Answer(text.strip(), None) for text in self.processor.batch_decode(out, skip_special_tokens=True)]
