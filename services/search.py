"""The search service: collections, ingest, and text / image / "more like this" search.

The only writer of the vector index. A query is embedded by the embedding service *with the model
version of the collection behind the alias*, never another (see ``infra.catalog``).

    bentoml serve services.search:SearchService --port 3001
"""

from __future__ import annotations

from typing import Any

import bentoml
import httpx
import numpy as np
from pydantic import BaseModel, Field, model_validator

from infra.blobs import BlobStore, read_uri
from infra.catalog import Catalog, Janitor, as_dict
from infra.errors import InvalidInput, NotReady, VlmopsError
from infra.images import decode_base64, decode_image
from infra.settings import Settings
from infra.vector_index import IndexPoint, open_index
from registry.store import PRODUCTION, RegistryStore
from services.client import EmbeddingClient
from services.edge import http_errors
from services.items import clean_text

SETTINGS = Settings()
LIMITS = SETTINGS.search


class IngestItem(BaseModel):
    image: str | None = Field(None, description="base64 of the image file")
    uri: str | None = Field(None, description="or where to read it: a path or an fsspec URI")
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


@bentoml.service(
    name="vlmops-search",
    traffic={"timeout": 300},
    workers=1,
    threads=LIMITS.threads,
    logging={"access": {"enabled": LIMITS.access_log}},
)
class SearchService:
    def __init__(self) -> None:
        index = open_index(SETTINGS)
        self.catalog = Catalog(SETTINGS.ensure_home().resolve() / "catalog", index, BlobStore(SETTINGS.blob_uri))
        self.janitor = Janitor(self.catalog, SETTINGS.worker.grace_s).start()  # drops replaced collections
        self.store = RegistryStore.from_settings(SETTINGS)
        self.embedder = EmbeddingClient(LIMITS.embedding_url)

    # ------------------------------------------------------------------ embedding, version-pinned
    def _checked(self, version: str, got: list[str]) -> None:
        if any(v != version for v in got):  # the invariant, checked on every answer
            raise VlmopsError(f"embedding service answered with versions {set(got)} for a request pinned to {version}")

    def _embed_images(self, images: list[bytes], version: str) -> np.ndarray:
        try:
            emb = self.embedder.embed_image(images, model_version=version)
        except httpx.HTTPError as exc:
            raise NotReady(f"embedding service unreachable at {LIMITS.embedding_url}: {exc}") from exc
        self._checked(version, emb.versions)
        return emb.vectors

    def _embed_text(self, text: str, version: str) -> np.ndarray:
        try:
            emb = self.embedder.embed_text([text], model_version=version)
        except httpx.HTTPError as exc:
            raise NotReady(f"embedding service unreachable at {LIMITS.embedding_url}: {exc}") from exc
        self._checked(version, emb.versions)
        return emb.vectors[0]

    # ------------------------------------------------------------------ collections
    @bentoml.api(route="/collections/create")
    def create_collection(self, name: str, model: str | None = None, keyword_fields: list[str] | None = None) -> dict:
        """A collection of ``model``'s embeddings (default: the CLIP model in settings), at its production version."""
        with http_errors():
            model = model or LIMITS.default_model
            info = self.store.by_alias(model, PRODUCTION)
            dim = int(info.tags.get("embed_dim", "0"))
            if dim <= 0:
                raise InvalidInput(f"{info.ref} records no embed_dim: not an embedding model")
            return as_dict(self.catalog.create(name, model, info.version, dim, keyword_fields or []))

    @bentoml.api(route="/collections/list")
    def list_collections(self) -> list[dict]:
        with http_errors():
            return [{**as_dict(c), "count": self.catalog.index.count(c.physical)} for c in self.catalog.list()]

    @bentoml.api(route="/collections/delete")
    def delete_collection(self, name: str) -> dict:
        with http_errors():
            self.catalog.delete(name)
        return {"deleted": name}

    # ------------------------------------------------------------------ ingest and search
    @bentoml.api
    def ingest(self, collection: str, items: list[IngestItem]) -> dict:
        """Images with payloads; every image is checked before anything is stored; idempotent by content."""
        with http_errors():
            if not items or len(items) > LIMITS.max_items:
                raise InvalidInput(f"send 1 to {LIMITS.max_items} items")
            self.catalog.info(collection)  # 404 before any work
            images = []
            for n, it in enumerate(items):
                data = (
                    decode_base64(it.image, f"item {n}") if it.image else read_uri(it.uri or "", LIMITS.max_image_bytes)
                )
                decode_image(
                    data, max_bytes=LIMITS.max_image_bytes, max_pixels=LIMITS.max_image_pixels, what=f"item {n}"
                )
                images.append(data)
            ids = self.catalog.ingest(collection, images, [dict(it.payload) for it in items], self._embed_images)
            return {"ids": ids, "count": self.catalog.count(collection)}

    @bentoml.api
    def search(
        self,
        collection: str,
        text: str | None = None,
        image: str | None = None,
        item_id: str | None = None,
        top_k: int = 10,
        filter: dict[str, str | int | bool] | None = None,
        score_threshold: float | None = None,
    ) -> list[ResultOut]:
        """By text, by image, or by an item already in the collection; results name the model version."""
        with http_errors():
            if sum(x is not None for x in (text, image, item_id)) != 1:
                raise InvalidInput("give exactly one of text, image and item_id")
            if not 1 <= top_k <= LIMITS.max_top_k:
                raise InvalidInput(f"top_k must be 1 to {LIMITS.max_top_k}")
            if item_id is not None:
                info, vector = self.catalog.vector_of(collection, item_id)
                found = self.catalog.search_vector(info, vector, top_k, filter, score_threshold)
            elif text is not None:
                query = clean_text(text, LIMITS.max_text_chars)
                found = self.catalog.search(
                    collection, lambda v: self._embed_text(query, v), top_k, filter, score_threshold
                )
            else:
                data = decode_base64(image or "", "image")
                decode_image(data, max_bytes=LIMITS.max_image_bytes, max_pixels=LIMITS.max_image_pixels)
                found = self.catalog.search(
                    collection, lambda v: self._embed_images([data], v)[0], top_k, filter, score_threshold
                )
            return [ResultOut(**as_dict(r)) for r in found]

    # ------------------------------------------------------------------ rebuilds (driven by the reindex job)
    @bentoml.api(route="/builds/start")
    def start_build(self, collection: str, version: str) -> dict:
        """Open (or reopen) the staging collection that ``version`` will fill; new ingests go there too."""
        with http_errors():
            info = self.catalog.info(collection)
            self.store.get(info.model, version)  # 404 for a version the registry does not have
            return {**self.catalog.start_build(collection, version), "model": info.model}

    @bentoml.api(route="/builds/items")
    def build_items(self, collection: str, offset: int = 0, limit: int = 256) -> list[dict]:
        """A page of the live items to re-embed: id, blob key, payload."""
        with http_errors():
            return [{"id": p.id, "payload": p.payload} for p in self.catalog.items(collection, offset, limit)]

    @bentoml.api(route="/builds/write")
    def write_build(self, collection: str, physical: str, points: list[BuildPoint]) -> dict:
        with http_errors():
            decoded = [
                IndexPoint(p.id, np.frombuffer(decode_base64(p.vector_b64, "vector"), dtype="<f4").tolist(), p.payload)
                for p in points
            ]
            return {"count": self.catalog.write_build(collection, physical, decoded)}

    @bentoml.api(route="/builds/finish")
    def finish_build(self, collection: str, physical: str, grace_s: float = 60.0) -> dict:
        """Swap the alias atomically; collections retired more than ``grace_s`` ago are dropped."""
        with http_errors():
            info = self.catalog.finish_build(collection, physical)
            dropped = self.catalog.drop_retired(grace_s)
            return {**as_dict(info), "count": self.catalog.count(collection), "dropped": dropped}
