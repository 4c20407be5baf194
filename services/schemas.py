"""Request and response schemas of the embedding service.

Request items validate themselves before they reach the batcher, so one bad request is answered
with its own 4xx and never fails the batch it would have joined. Limits come from settings, so the
item classes are built by :func:`build_request_schemas`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, Field, field_validator

from infra.errors import InvalidInput
from infra.settings import EmbeddingSettings
from services.edge import validating
from services.items import RequestHooks, build_base_items, clean_text

Encoding = Literal["json", "base64"]


class Embedding(BaseModel):
    vector: list[float] | None = Field(None, description="the vector as numbers (encoding 'json')")
    vector_b64: str | None = Field(None, description="base64 of little-endian float32 (encoding 'base64')")
    dim: int
    model: str
    version: str


class TextEmbedding(Embedding):
    truncated: bool = Field(False, description="the text was longer than the model's context and was cut")


class ImageEmbedding(Embedding):
    pass


def embedding_json(vector: np.ndarray, encoding: str, **fields: Any) -> bytes:
    """One :class:`TextEmbedding` / :class:`ImageEmbedding` as JSON bytes, made by orjson straight from
    the float32 vector: each number is the shortest decimal that reads back as the same float32 (half
    the bytes of the float64 digits of ``tolist()``), in a third of the time pydantic takes to build and
    serialise the model."""
    vector = np.ascontiguousarray(vector, dtype=np.float32)
    body: dict[str, Any] = {"vector": None, "vector_b64": None, "dim": int(vector.shape[0]), **fields}
    if encoding == "base64":
        body["vector_b64"] = base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")
    else:
        body["vector"] = vector
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


class Classification(BaseModel):
    labels: list[str] = Field(description="candidate labels, most probable first")
    probs: list[float]
    top_label: str
    model: str
    version: str


@dataclass(frozen=True)
class RequestSchemas:
    TextItem: type[BaseModel]
    ImageItem: type[BaseModel]
    ClassifyItem: type[BaseModel]


def build_request_schemas(limits: EmbeddingSettings, hooks: Callable[[], RequestHooks | None]) -> RequestSchemas:
    """Item classes bound to ``limits``; ``hooks`` returns the running service (None outside a server)."""
    base = build_base_items(limits, hooks)

    class Encoded(BaseModel):
        encoding: Encoding = Field("json", description="'base64': vectors as base64 little-endian float32")

    class TextItem(base.Pinned, Encoded):  # type: ignore[name-defined,misc]
        text: str = Field(description=f"at most {limits.max_text_chars} characters; over the model's context: cut")

        @field_validator("text")
        @classmethod
        @validating
        def _text(cls, v: str) -> str:
            return clean_text(v, limits.max_text_chars)

    class ImageItem(base.ImageItem, Encoded):  # type: ignore[name-defined,misc]
        pass

    class ClassifyItem(base.ImageItem):  # type: ignore[name-defined,misc]
        labels: list[str] = Field(min_length=2, max_length=limits.max_labels)
        templates: list[str] | None = Field(None, description="prompt templates with one '{}'; default: built-in set")

        @field_validator("labels")
        @classmethod
        @validating
        def _labels(cls, v: list[str]) -> list[str]:
            for label in v:
                clean_text(label, limits.max_text_chars, "label")
            if len(set(v)) != len(v):
                raise InvalidInput("labels must be distinct")
            return v

        @field_validator("templates")
        @classmethod
        @validating
        def _templates(cls, v: list[str] | None) -> list[str] | None:
            if v is None:
                return v
            if not v:
                raise InvalidInput("templates is empty: omit it for the built-in set")
            for t in v:
                if t.count("{}") != 1:
                    raise InvalidInput(f"template {t!r} must hold exactly one '{{}}'")
            return v

    return RequestSchemas(TextItem, ImageItem, ClassifyItem)
