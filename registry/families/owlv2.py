"""OWLv2 (``Owlv2ForObjectDetection``), e.g. google/owlv2-base-patch16-ensemble."""

from __future__ import annotations

from typing import ClassVar

from transformers import Owlv2ForObjectDetection

from registry.families.grounding import Grounder


class OwlV2(Grounder):
    family: ClassVar[str] = "owlv2"
    model_class = Owlv2ForObjectDetection
    square_padding = True
