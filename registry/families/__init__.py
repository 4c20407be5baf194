"""Model families. One ``match`` maps a family name to its class; no discovery by import side effects."""

from __future__ import annotations

from pathlib import Path

from registry.families.base import ModelFamily, read_manifest


def family_class(name: str) -> type[ModelFamily]:
    match name:
        case "clip":
            from registry.families.clip import ClipModel

            return ClipModel
        case _:
            raise ValueError(f"unknown model family {name!r} (known: clip)")


def load_model(path: Path, device: str = "cpu") -> ModelFamily:
    """Load any model saved by vlmops, whatever its family."""
    return family_class(read_manifest(path)["family"]).load(path, device)


__all__ = ["ModelFamily", "family_class", "load_model", "read_manifest"]
