"""OWL-ViT (``OwlViTForObjectDetection``), e.g. google/owlvit-base-patch32."""

from __future__ import annotations

from typing import ClassVar

from transformers import OwlViTForObjectDetection

from registry.families.grounding import Grounder


class OwlViT(Grounder):
    family: ClassVar[str] = "owlvit"
    model_class = OwlViTForObjectDetection
