"""Request items every model service shares: a pinnable model version, and an image that decodes itself.

Items validate themselves when the request is parsed, before they reach the batcher, so one bad
request is answered with its own 4xx and never fails the batch it would have joined. Limits come
from settings, so the classes are built by :func:`build_base_items`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image
from pydantic import BaseModel, Field, PrivateAttr, model_validator

from infra.errors import InvalidInput
from infra.images import decode_base64, decode_image
from infra.settings import ServiceSettings
from services.edge import validating


@dataclass(frozen=True)
class Prepared:
    """Pixels made ready at request time by the transform identified by ``key``."""

    key: str
    pixels: torch.Tensor


class RequestHooks(Protocol):
    """What item validation asks of the running service."""

    def check_version(self, version: str) -> None: ...

    def preprocess(self, version: str | None, image: Image.Image) -> Prepared | None: ...


def clean_text(text: str, limit: int, what: str = "text") -> str:
    if not text.strip():
        raise InvalidInput(f"{what} is empty")
    if len(text) > limit:
        raise InvalidInput(f"{what} is {len(text)} characters, over the limit of {limit}")
    return text


@dataclass(frozen=True)
class BaseItems:
    Pinned: type[BaseModel]
    ImageItem: type[BaseModel]


def build_base_items(limits: ServiceSettings, hooks: Callable[[], RequestHooks | None]) -> BaseItems:
    """``hooks`` returns the running service (None outside a server)."""

    class Pinned(BaseModel):
        model_version: str | None = Field(None, description="pin a registered version; default: production")

        @model_validator(mode="after")
        @validating
        def _known_version(self) -> Any:
            service = hooks()
            if self.model_version is not None and service is not None:
                service.check_version(self.model_version)
            return self

    class ImageItem(Pinned):
        image: str = Field(description="base64 of the image file (PNG, JPEG, WebP, ...)")
        _decoded: Image.Image | None = PrivateAttr(None)
        _prepared: Prepared | None = PrivateAttr(None)

        @model_validator(mode="after")
        @validating
        def _decode(self) -> Any:
            # decoded (and, where the service can, preprocessed) here, at request time, off the model's path
            raw = decode_base64(self.image)
            self._decoded = decode_image(raw, max_bytes=limits.max_image_bytes, max_pixels=limits.max_image_pixels)
            service = hooks()
            if service is not None:
                self._prepared = service.preprocess(self.model_version, self._decoded)
            return self

        @property
        def prepared(self) -> Prepared | None:
            return self._prepared

        @property
        def pil(self) -> Image.Image:
            if self._decoded is None:
                raise InvalidInput("image was not decoded")
            return self._decoded

    return BaseItems(Pinned, ImageItem)
