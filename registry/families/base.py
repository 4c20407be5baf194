"""The one small interface every model family implements: save, load, describe."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Self

from infra.errors import ModelFormatError

MANIFEST = "vlmops.json"
# the grounding services' default: lowest score a detection is kept with (here, apart from the grounding
# family and its torch, for the request schemas that a service's supervisor imports)
DEFAULT_THRESHOLD = 0.1


class ModelFamily(ABC):
    """A loaded model of one family. Subclasses declare ``family`` and implement the three methods."""

    family: ClassVar[str]

    @classmethod
    @abstractmethod
    def load(cls, path: Path, device: str = "cpu") -> Self:
        """Load from a directory written by :meth:`save`."""

    @abstractmethod
    def save(self, path: Path) -> None:
        """Write everything needed to :meth:`load` again into ``path`` (a directory)."""

    @abstractmethod
    def describe(self) -> dict[str, str]:
        """Facts recorded as registry tags: architecture, embedding size, ..."""

    def write_manifest(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        path.mkdir(parents=True, exist_ok=True)
        manifest = {"family": self.family, **self.describe(), **(extra or {})}
        (path / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))


def read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not file.is_file():
        raise ModelFormatError(f"{path} holds no {MANIFEST}: not a model saved by vlmops")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{file} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or "family" not in data:
        raise ModelFormatError(f"{file} names no model family")
    return data
