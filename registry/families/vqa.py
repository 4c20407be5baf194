"""Visual question answering: what every VQA family shares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from registry.families.hf import HFModel


@dataclass(frozen=True)
class Answer:
    answer: str
    score: float | None  # a probability where the model gives one (classifier families)


class VQAModel(HFModel):
    def answer(self, images: Sequence[Image.Image], questions: Sequence[str], max_new_tokens: int = 10) -> list[Answer]:
        raise NotImplementedError
