"""Shared base of the transformers families: load from a model id, a ``save_pretrained`` directory or a
registry version (which is such a directory); save model + processor + manifest; autocast at run time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from transformers import AutoProcessor, PreTrainedModel

from infra.errors import ModelFormatError
from registry.families.base import ModelFamily, read_manifest


class HFModel(ModelFamily):
    model_class: ClassVar[type[PreTrainedModel]]
    processor_class: ClassVar[Any] = AutoProcessor

    def __init__(self, model: PreTrainedModel, processor: Any, source: str, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.processor = processor
        self.source = source
        self.device = device
        self.precision = "fp32"

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str = "cpu") -> Self:
        """A transformers model id (downloads where a hub is reachable) or a local ``save_pretrained`` directory."""
        try:
            model = cls.model_class.from_pretrained(name_or_path)
            processor = cls.processor_class.from_pretrained(name_or_path)
        except (OSError, ValueError) as exc:
            raise ModelFormatError(f"cannot load a {cls.family} model from {name_or_path!r}: {exc}") from exc
        return cls(model, processor, name_or_path, device)

    @classmethod
    def load(cls, path: Path, device: str = "cpu") -> Self:
        manifest = read_manifest(path)
        if manifest["family"] != cls.family:
            raise ModelFormatError(f"{path} holds a {manifest['family']!r} model, not {cls.family!r}")
        loaded = cls.from_pretrained(str(path), device)
        loaded.source = str(manifest.get("source", path))
        return loaded

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)
        self.write_manifest(path, {"source": self.source})

    def describe(self) -> dict[str, str]:
        return {"architecture": str(self.model.config.model_type), "model_class": type(self.model).__name__}

    def configure_runtime(self, precision: str = "fp32", compile_model: bool = False) -> None:
        self.precision = precision

    @contextmanager
    def running(self) -> Iterator[None]:
        autocast: AbstractContextManager[Any] = nullcontext()
        if self.precision != "fp32":
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            autocast = torch.autocast(device_type=torch.device(self.device).type, dtype=dtype)
        with torch.inference_mode(), autocast:
            yield

    def inputs(self, **kwargs: Any) -> Any:
        """Processor outputs on this model's device."""
        return self.processor(return_tensors="pt", **kwargs).to(self.device)
