"""Image captioning on transformers generation: what every captioning family shares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from registry.families.hf import HFModel


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 20
    num_beams: int = 1


class Captioner(HFModel):
    def caption(self, images: Sequence[Image.Image], params: GenerationParams = GenerationParams()) -> list[str]:
        with self.running():
            inputs = self.inputs(images=list(images))
            out = self.model.generate(
                **inputs, max_new_tokens=params.max_new_tokens, num_beams=params.num_beams, do_sample=False
            )
        return [text.strip() for text in self.processor.batch_decode(out, skip_special_tokens=True)]
