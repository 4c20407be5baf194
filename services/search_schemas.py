"""The search service's request and response models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator


class IngestItem(BaseModel):
    image: str | None = Field(None, description="base64 of the image file")
    uri: str | None = Field(
        None,
        description="or where the service reads it: only under VLMOPS_SEARCH__INGEST_URI_PREFIXES (local folders) "
        "or from VLMOPS_SEARCH__INGEST_URI_HOSTS (remote origins); off by default",
    )
    payload: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> IngestItem:
        if (self.image is None) == (self.uri is None):
            raise ValueError("give exactly one of image and uri")
        return self


class BuildPoint(BaseModel):
    id: str
    vector_b64: str = Field(description="base64 of little-endian float32")
    payload: dict[str, Any] = Field(default_factory=dict)


class ResultOut(BaseModel):
    id: str
    score: float
    payload: dict[str, Any]
    blob_uri: str
    model: str
    version: str
