"""BLIP captioning (``BlipForConditionalGeneration``), e.g. Salesforce/blip-image-captioning-base."""

from __future__ import annotations

from typing import ClassVar

from transformers import BlipForConditionalGeneration

from registry.families.captioning import Captioner


class BlipCaptioner(Captioner):
    family: ClassVar[str] = "blip-caption"
    model_class = BlipForConditionalGeneration
