"""Model families, one module each. One ``match`` maps a family name to its class: no import side effects."""

from __future__ import annotations

from pathlib import Path

from registry.families.base import ModelFamily, read_manifest

FAMILIES = ("clip", "blip-caption", "git-caption", "blip-vqa", "vilt-vqa", "owlvit", "owlv2")


def family_class(name: str) -> type[ModelFamily]:
    match name:
        case "clip":
            from registry.families.clip import ClipModel

            return ClipModel
        case "blip-caption":
            from registry.families.blip_caption import BlipCaptioner

            return BlipCaptioner
        case "git-caption":
            from registry.families.git_caption import GitCaptioner

            return GitCaptioner
        case "blip-vqa":
            from registry.families.blip_vqa import BlipVQA

            return BlipVQA
        case "vilt-vqa":
            from registry.families.vilt_vqa import ViltVQA

            return ViltVQA
        case "owlvit":
            from registry.families.owlvit import OwlViT

            return OwlViT
        case "owlv2":
            from registry.families.owlv2 import OwlV2

            return OwlV2
        case _:
            raise ValueError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)})")


def load_model(path: Path, device: str = "cpu") -> ModelFamily:
    """Load any model saved by vlmops, whatever its family."""
    return family_class(read_manifest(path)["family"]).load(path, device)


__all__ = ["ModelFamily", "family_class", "load_model", "read_manifest"]
