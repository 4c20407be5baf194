"""Request items every model service shares: a pinnable model version, and an image that decodes itself.

Items validate themselves when the request is parsed, before they reach the batcher, so one bad
request is answered with its own 4xx and never fails the batch it would have joined. Limits come
from settings, so the classes are built by :func:`build_base_items`.

HTTP and gRPC items are the same classes, validated the same way, and join the same batches. A gRPC
item is validated with the context ``{"wire": "grpc"}`` (:data:`GRPC`): its ``wire`` tells the batch
which answer to make for it, and its image may be the file's bytes themselves, not base64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image
from pydantic import BaseModel, Field, PrivateAttr, ValidationInfo, model_validator
from pydantic_core.core_schema import ValidatorFunctionWrapHandler

from infra.errors import InvalidInput
from infra.images import decode_base64, decode_image
from infra.settings import ServiceSettings
from services.edge import validating

if TYPE_CHECKING:
    import torch

GRPC = {"wire": "grpc"}  # the validation context of items that came over gRPC


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
        _wire: str = PrivateAttr("http")

        @model_validator(mode="after")
        @validating
        def _known_version(self, info: ValidationInfo) -> Any:
            if info.context:
                self._wire = info.context.get("wire", "http")
            service = hooks()
            if self.model_version is not None and service is not None:
                service.check_version(self.model_version)
            return self

        @property
        def wire(self) -> str:
            """``http`` or ``grpc``: the protocol the item came by (its answer is made for it)."""
            return self._wire

    class ImageItem(Pinned):
        image: str = Field(description="base64 of the image file (PNG, JPEG, WebP, ...)")
        _decoded: Image.Image | None = PrivateAttr(None)
        _prepared: Prepared | None = PrivateAttr(None)

        @model_validator(mode="wrap")
        @classmethod
        @validating
        def _decode(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
            # decoded (and, where the service can, preprocessed) here, at request time, off the model's path
            raw = data.get("image") if isinstance(data, dict) else None
            if isinstance(raw, bytes):  # gRPC: the file itself
                data = {**data, "image": ""}
            self = handler(data)
            if not isinstance(raw, bytes):
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
