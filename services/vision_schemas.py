"""Request and response schemas of the captioning, VQA and grounding services (limits from settings)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, Field, field_validator

from infra.errors import InvalidInput
from infra.settings import CaptioningSettings, GroundingSettings, VQASettings
from registry.families.base import DEFAULT_THRESHOLD
from services.edge import validating
from services.items import RequestHooks, build_base_items, clean_text

T = TypeVar("T")


class CaptionOut(BaseModel):
    caption: str
    model: str
    version: str


class AnswerOut(BaseModel):
    answer: str
    score: float | None = Field(None, description="the answer's probability where the model gives one")
    model: str
    version: str


class Box(BaseModel):
    box: list[float] = Field(description="[x0, y0, x1, y1] in pixels of the input image")
    score: float
    query: str


class GroundingOut(BaseModel):
    detections: list[Box] = Field(description="sorted by score, highest first")
    model: str
    version: str


def caption_item(limits: CaptioningSettings, hooks: Callable[[], RequestHooks | None]) -> type[BaseModel]:
    base = build_base_items(limits, hooks)

    class CaptionItem(base.ImageItem):  # type: ignore[name-defined,misc]
        max_new_tokens: int = Field(20, ge=1, le=limits.max_new_tokens)
        num_beams: int = Field(1, ge=1, le=limits.max_beams)

    return CaptionItem


def vqa_item(limits: VQASettings, hooks: Callable[[], RequestHooks | None]) -> type[BaseModel]:
    base = build_base_items(limits, hooks)

    class QuestionItem(base.ImageItem):  # type: ignore[name-defined,misc]
        question: str = Field(description=f"at most {limits.max_text_chars} characters")
        max_new_tokens: int = Field(10, ge=1, le=limits.max_new_tokens, description="generative families only")

        @field_validator("question")
        @classmethod
        @validating
        def _question(cls, v: str) -> str:
            return clean_text(v, limits.max_text_chars, "question")

    return QuestionItem


def openapi30_exclusive(schema: dict[str, Any]) -> None:
    """BentoML publishes OpenAPI 3.0, where ``exclusiveMinimum`` is a flag beside ``minimum`` (pydantic
    writes the JSON Schema 2020 number, which 3.0 tools cannot read)."""
    if isinstance(schema.get("exclusiveMinimum"), int | float):
        schema["minimum"], schema["exclusiveMinimum"] = schema["exclusiveMinimum"], True


def grounding_item(limits: GroundingSettings, hooks: Callable[[], RequestHooks | None]) -> type[BaseModel]:
    base = build_base_items(limits, hooks)

    class GroundingItem(base.ImageItem):  # type: ignore[name-defined,misc]
        queries: list[str] = Field(min_length=1, max_length=limits.max_queries, description="what to find")
        threshold: float = Field(DEFAULT_THRESHOLD, ge=0.0, le=1.0, description="lowest score kept")
        nms_iou: float = Field(
            0.3,
            gt=0.0,
            le=1.0,
            description="boxes of one query overlapping more are merged",
            json_schema_extra=openapi30_exclusive,
        )

        @field_validator("queries")
        @classmethod
        @validating
        def _queries(cls, v: list[str]) -> list[str]:
            for q in v:
                clean_text(q, limits.max_text_chars, "query")
            if len(set(v)) != len(v):
                raise InvalidInput("queries must be distinct")
            return v

    return GroundingItem


def per_params(
    items: list[Any], fields: Sequence[str], run: Callable[[tuple[Any, ...], list[Any]], Sequence[T]]
) -> list[T]:
    """``run(values, items)`` once per distinct values of ``fields`` (e.g. generation parameters) among
    ``items``; results in the items' order."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(tuple(getattr(it, f) for f in fields), []).append(i)
    out: list[Any] = [None] * len(items)
    for values, idx in groups.items():
        for i, result in zip(idx, run(values, [items[i] for i in idx]), strict=True):
            out[i] = result
    return out
