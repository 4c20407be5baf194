"""GIT captioning (``GitForCausalLM``), e.g. microsoft/git-base-coco."""

from __future__ import annotations

from typing import ClassVar

from transformers import GitForCausalLM

from registry.families.captioning import Captioner


class GitCaptioner(Captioner):
    family: ClassVar[str] = "git-caption"
    model_class = GitForCausalLM
