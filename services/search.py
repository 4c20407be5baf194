"""The search service: collections, ingest, and text / image / "more like this" search.

A query is embedded by the embedding service *with the model version of the collection behind the
alias*, never another (see ``infra.catalog``). The collections' state is in the catalog database
(``VLMOPS_CATALOG_URL``), the vectors in the index: with a PostgreSQL catalog and a Qdrant server
the service keeps nothing on its own disk and runs as several replicas; with the embedded Qdrant
Edge index (``VLMOPS_INDEX_PATH``) it is the one process that opens the index.

    bentoml serve services.search:SearchService --port 3001
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import bentoml
import httpx
import numpy as np
from bentoml.validators import ContentType

from infra.blobs import BlobStore, is_content_hash
from infra.catalog import Catalog, Janitor, Result, as_dict
from infra.catalog_db import CatalogDB
from infra.catalog_migration import migrate_json
from infra.clients import EmbeddingClient, Embeddings, ServiceError
from infra.errors import InvalidInput, Misconfigured, NotReady, VlmopsError
from infra.images import decode_base64, decode_image
from infra.metrics import SeriesSet
from infra.settings import Settings
from infra.uris import UriPolicy
from infra.vector_index import IndexPoint, open_index
from infra.vector_index.base import is_uuid
from registry.store import PRODUCTION, RegistryStore
from services.edge import http_errors
from services.gateway import gateway
from services.guard import audit_target
from services.items import clean_text
from services.rpc.search import servicers
from services.search_metrics import ITEMS, LIVE, REINDEX_ACTIVE, REINDEX_FAILURES
from services.search_schemas import BuildPoint, IngestItem, ResultOut
from services.thumbnails import ThumbnailCache, check_size, make_thumbnail

SETTINGS = Settings()
LIMITS = SETTINGS.search
BULK_PAGE = 4096  # items in one page of a bulk job (ids asked about, items written)


@gateway(
    LIMITS,
    SETTINGS.auth,
    log_format=SETTINGS.log_format,
    read=("list_collections", "search", "thumbnail"),
    write=("create_collection", "ingest"),
    admin=(
        "delete_collection",
        "start_build",
        "build_items",
        "write_build",
        "write_build_vectors",
        "finish_build",
        "ingest_known",
        "ingest_vectors",
        "drop_build",
    ),
    fast_path=False,
    grpc=servicers(LIMITS),
)
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
        self.catalog = Catalog(CatalogDB(SETTINGS.catalog_uri), index, BlobStore(SETTINGS.blob_uri))
        migrate_json(self.catalog, SETTINGS.home.resolve() / "catalog")  # the file catalog of earlier releases
        self.thumbnails = ThumbnailCache(LIMITS.thumbnail_cache_bytes)
        self.series = {gauge: SeriesSet(gauge) for gauge in (ITEMS, LIVE, REINDEX_FAILURES, REINDEX_ACTIVE)}
        self.refresh_metrics()
        # drops replaced collections, refreshes the catalog gauges
        self.janitor = Janitor(
            self.catalog,
            SETTINGS.worker.grace_s,
            min(10.0, max(1.0, SETTINGS.worker.grace_s / 2)),
            self.refresh_metrics,
        ).start()
        self.store = RegistryStore.from_settings(SETTINGS)
        self.embedder = EmbeddingClient(LIMITS.embedding_url, api_key=SETTINGS.auth.key)
        self.uris = UriPolicy(LIMITS.ingest_uri_prefixes, LIMITS.ingest_uri_hosts)

    def refresh_metrics(self) -> None:
        """The catalog gauges (from the janitor's thread); a version or collection gone is set to 0."""
        rows = self.catalog.status()
        jobs = {row["name"]: row["reindex"] or {} for row in rows}
        self.series[ITEMS].publish({(row["name"], row["version"]): row["count"] for row in rows})
        self.series[LIVE].publish({(row["name"], row["model"], row["version"]): 1 for row in rows})
        self.series[REINDEX_FAILURES].publish({(name,): job.get("failures", 0) for name, job in jobs.items()})
        running = {(name,): int(job.get("state") in ("queued", "running")) for name, job in jobs.items()}
        self.series[REINDEX_ACTIVE].publish(running)

    # ------------------------------------------------------------------ embedding, version-pinned
    def _checked(self, version: str, got: list[str]) -> None:
        if any(v != version for v in got):  # the invariant, checked on every answer
            raise VlmopsError(f"embedding service answered with versions {set(got)} for a request pinned to {version}")

    def _embed(self, call: Callable[[], Embeddings], version: str) -> np.ndarray:
        try:
            emb = call()
        except httpx.HTTPError as exc:
            raise NotReady(f"embedding service unreachable at {LIMITS.embedding_url}: {exc}") from exc
        except ServiceError as exc:
            if exc.http_status in (401, 403):  # not the caller's mistake: this service's own key
                raise Misconfigured(
                    f"the embedding service refused this search service's key (VLMOPS_AUTH__KEY): {exc.message}"
                ) from exc
            raise
        self._checked(version, emb.versions)
        return emb.vectors

    def _embed_images(self, images: list[bytes], version: str) -> np.ndarray:
        return self._embed(lambda: self.embedder.embed_image(images, model_version=version), version)

    def _embed_text(self, text: str, version: str) -> np.ndarray:
        return self._embed(lambda: self.embedder.embed_text([text], model_version=version), version)[0]

    # ------------------------------------------------------------------ collections
    @bentoml.api(route="/collections/create")
    def create_collection(self, name: str, model: str | None = None, keyword_fields: list[str] | None = None) -> dict:
        """A collection of ``model``'s embeddings (default: the CLIP model in settings), at its production version."""
        return self.create(name, model, keyword_fields or [])

    def create(self, name: str, model: str | None, keyword_fields: list[str]) -> dict:
        """Create a collection (HTTP and gRPC)."""
        audit_target(name)
        with http_errors():
            model = model or LIMITS.default_model
            info = self.store.by_alias(model, PRODUCTION)
            dim = int(info.tags.get("embed_dim", "0"))
            if dim <= 0:
                raise InvalidInput(f"{info.ref} records no embed_dim: not an embedding model")
            return as_dict(self.catalog.create(name, model, info.version, dim, keyword_fields))

    @bentoml.api(route="/collections/list")
    def list_collections(self) -> list[dict]:
        """Every collection: model, live version, item count, a running build, the last reindex job."""
        return self.collections()

    def collections(self) -> list[dict]:
        with http_errors():
            return self.catalog.status()

    @bentoml.api(route="/collections/delete")
    def delete_collection(self, name: str) -> dict:
        return self.delete(name)

    def delete(self, name: str) -> dict:
        audit_target(name)
        with http_errors():
            self.catalog.delete(name)
        return {"deleted": name}

    # ------------------------------------------------------------------ ingest and search
    @bentoml.api
    def ingest(self, collection: str, items: list[IngestItem]) -> dict:
        """Images with payloads; every image is checked before anything is stored; idempotent by content."""
        audit_target(collection)
        with http_errors():
            sources = [
                decode_base64(it.image, f"item {n}") if it.image is not None else it.uri or ""
                for n, it in enumerate(items)
            ]
        return self.ingest_sources(collection, sources, [dict(it.payload) for it in items])

    def ingest_sources(self, collection: str, sources: list[bytes | str], payloads: list[dict[str, Any]]) -> dict:
        """Ingest (HTTP and gRPC): each source is an image file's bytes or a URI the service may read."""
        audit_target(collection)
        with http_errors():
            if not sources or len(sources) > LIMITS.max_items:
                raise InvalidInput(f"send 1 to {LIMITS.max_items} items")
            self.catalog.info(collection)  # 404 before any work
            images = []
            for n, source in enumerate(sources):
                what = f"item {n}"
                data = source if isinstance(source, bytes) else self.uris.read(source, LIMITS.max_image_bytes, what)
                decode_image(data, max_bytes=LIMITS.max_image_bytes, max_pixels=LIMITS.max_image_pixels, what=what)
                images.append(data)
            ids = self.catalog.ingest(collection, images, payloads, self._embed_images)
            return {"ids": ids, "count": self.catalog.count(collection)}

    # ------------------------------------------------------------------ bulk ingest (driven by the ingest job)
    @bentoml.api(route="/ingest/known")
    def ingest_known(self, collection: str, ids: list[str]) -> dict:
        """Which of ``ids`` (item ids: a bulk job derives them from the images' content hashes) the live
        collection holds already, and the versions a new item must be embedded by now (the live one, and a
        running build's)."""
        audit_target(collection)
        with http_errors():
            if len(ids) > BULK_PAGE:
                raise InvalidInput(f"ask about at most {BULK_PAGE} ids at a time")
            return {"known": self.catalog.known(collection, ids), "versions": self.catalog.targets(collection)}

    @bentoml.api(route="/ingest/vectors")
    def ingest_vectors(
        self, collection: str, blobs: list[str], payloads: list[dict[str, Any]], vectors_b64: dict[str, str]
    ) -> dict:
        """A page of a bulk ingest: images the job put in the blob store (their keys), embedded by the job
        with each version in ``vectors_b64`` (a buffer of little-endian float32 per version, a row per blob).
        Written only if they cover every version the collection is embedded by at this moment; otherwise
        nothing is written and ``missing`` names the versions to add."""
        audit_target(collection)
        with http_errors():
            if not blobs or len(blobs) > BULK_PAGE:
                raise InvalidInput(f"send 1 to {BULK_PAGE} items")
            if bad := [k for k in blobs if not is_content_hash(k)][:3]:
                raise InvalidInput(f"blobs {bad} are not blob keys (the SHA-256 of an image, in hex)")
            dim = self.catalog.info(collection).dim
            vectors = {}
            for version, packed in vectors_b64.items():
                flat = np.frombuffer(decode_base64(packed, f"vectors_b64[{version!r}]"), dtype="<f4")
                if flat.size != dim * len(blobs):
                    raise InvalidInput(
                        f"vectors_b64[{version!r}] holds {flat.size} floats, not {len(blobs)} rows of {dim}"
                    )
                vectors[version] = flat.reshape(len(blobs), dim)
            ids, missing = self.catalog.ingest_embedded(collection, blobs, payloads, vectors)
            return {"ids": ids, "missing": missing, "count": self.catalog.count(collection)}

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
        version: str | None = None,
    ) -> list[ResultOut]:
        """By text, by image, or by an item already in the collection; results name the model version.
        ``version``: search the collection as embedded by that version (a running or shadow build's staging
        collection; 409 when there is none); default: the live one."""
        with http_errors():
            data = decode_base64(image, "image") if image is not None else None
        found = self.find(collection, text, data, item_id, top_k, filter, score_threshold, version)
        return [ResultOut(**as_dict(r)) for r in found]

    def find(
        self,
        collection: str,
        text: str | None,
        image: bytes | None,
        item_id: str | None,
        top_k: int,
        filter: dict[str, Any] | None,
        score_threshold: float | None,
        version: str | None = None,
    ) -> list[Result]:
        """Search (HTTP and gRPC): by exactly one of text, an image file's bytes and an item id."""
        with http_errors():
            if sum(x is not None for x in (text, image, item_id)) != 1:
                raise InvalidInput("give exactly one of text, image and item_id")
            if not 1 <= top_k <= LIMITS.max_top_k:
                raise InvalidInput(f"top_k must be 1 to {LIMITS.max_top_k}")
            if item_id is not None:
                info, vector = self.catalog.vector_of(collection, item_id, version)
                return self.catalog.search_vector(info, vector, top_k, filter, score_threshold)
            if text is not None:
                query = clean_text(text, LIMITS.max_text_chars)
                return self.catalog.search(
                    collection, lambda v: self._embed_text(query, v), top_k, filter, score_threshold, version
                )
            data = image or b""
            decode_image(data, max_bytes=LIMITS.max_image_bytes, max_pixels=LIMITS.max_image_pixels)
            return self.catalog.search(
                collection, lambda v: self._embed_images([data], v)[0], top_k, filter, score_threshold, version
            )

    @bentoml.api
    def thumbnail(
        self,
        collection: str,
        item_id: str,
        size: int = 256,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> Annotated[bytes, ContentType("image/jpeg")]:
        """A JPEG of an item's original, at most ``size`` (64, 128, 256 or 512) pixels on the longer side;
        cached in this process, and by the browser (the original is content-addressed: it never changes)."""
        with http_errors():
            check_size(size)
            key = self.catalog.blob_of(collection, item_id)
            made = self.thumbnails.get((key, size))
            if made is None:
                made = make_thumbnail(
                    self.catalog.blobs.get(key),
                    size,
                    max_bytes=LIMITS.max_image_bytes,
                    max_pixels=LIMITS.max_image_pixels,
                )
                self.thumbnails.put((key, size), made)
        if ctx is not None:
            ctx.response.headers["cache-control"] = "private, max-age=86400, immutable"
            ctx.response.headers["etag"] = f'"{key[:32]}-{size}"'
        return made

    # ------------------------------------------------------------------ rebuilds (driven by the reindex job)
    @bentoml.api(route="/builds/start")
    def start_build(self, collection: str, version: str, replace: bool = False) -> dict:
        """Open (or reopen) the staging collection that ``version`` will fill; new ingests go there too.
        ``replace``: abandon a build of another version (its job is gone)."""
        audit_target(collection)
        with http_errors():
            info = self.catalog.info(collection)
            self.store.get(info.model, version)  # 404 for a version the registry does not have
            return {**self.catalog.start_build(collection, version, replace), "model": info.model}

    @bentoml.api(route="/builds/items")
    def build_items(self, collection: str, cursor: str | None = None, limit: int = 256) -> dict:
        """A page of the live items to re-embed (id, blob key, payload) from ``cursor``, and the next
        page's cursor (null after the last)."""
        audit_target(collection)
        with http_errors():
            if not 1 <= limit <= BULK_PAGE:
                raise InvalidInput(f"limit must be 1 to {BULK_PAGE}")
            if cursor is not None and not is_uuid(cursor):
                raise InvalidInput(f"cursor {cursor!r} is not one this service gave out")
            points, after = self.catalog.items(collection, cursor, limit)
            return {"items": [{"id": p.id, "payload": p.payload} for p in points], "next_cursor": after}

    @bentoml.api(route="/builds/write")
    def write_build(self, collection: str, physical: str, points: list[BuildPoint]) -> dict:
        audit_target(collection)
        with http_errors():
            decoded = [
                IndexPoint(p.id, np.frombuffer(decode_base64(p.vector_b64, "vector"), dtype="<f4").tolist(), p.payload)
                for p in points
            ]
            return {"count": self.catalog.write_build(collection, physical, decoded)}

    @bentoml.api(route="/builds/write_vectors")
    def write_build_vectors(
        self, collection: str, physical: str, ids: list[str], payloads: list[dict[str, Any]], vectors_b64: str
    ) -> dict:
        """A page of a rebuild in one upsert: ``vectors_b64`` is the page's vectors as one buffer of
        little-endian float32, a row per id (a bulk job's page costs one decode, not one per point)."""
        audit_target(collection)
        with http_errors():
            if len(ids) != len(payloads) or not ids:
                raise InvalidInput(f"{len(ids)} ids and {len(payloads)} payloads: give one payload per id")
            if bad := [i for i in ids if not is_uuid(i)][:3]:
                raise InvalidInput(f"ids {bad} are not item ids of this service")
            dim = self.catalog.info(collection).dim
            flat = np.frombuffer(decode_base64(vectors_b64, "vectors_b64"), dtype="<f4")
            if flat.size != dim * len(ids):
                raise InvalidInput(f"vectors_b64 holds {flat.size} floats, not {len(ids)} rows of {dim}")
            rows = flat.reshape(len(ids), dim).tolist()
            points = [IndexPoint(i, v, p) for i, v, p in zip(ids, rows, payloads, strict=True)]
            return {"count": self.catalog.write_build(collection, physical, points)}

    @bentoml.api(route="/builds/drop")
    def drop_build(self, collection: str) -> dict:
        """Abandon the collection's running or shadow build (its staging collection is dropped)."""
        audit_target(collection)
        with http_errors():
            return {"dropped": self.catalog.drop_build(collection)}

    @bentoml.api(route="/builds/finish")
    def finish_build(self, collection: str, physical: str, grace_s: float = 60.0) -> dict:
        """Swap the alias atomically; collections retired more than ``grace_s`` ago are dropped."""
        audit_target(collection)
        with http_errors():
            info = self.catalog.finish_build(collection, physical)
            dropped = self.catalog.drop_retired(grace_s)
            return {**as_dict(info), "count": self.catalog.count(collection), "dropped": dropped}
