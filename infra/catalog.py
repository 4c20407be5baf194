"""Collections: which registered model each uses, which physical collection (and so which model
version) is live behind its alias, and the ingest / search / rebuild operations on them.

The invariant lives here: a query is embedded by the version of the physical collection it
searches. A search reads the collection's row once and uses that one physical collection and its
version for both the embedding and the lookup.

The state lives in the catalog database (``infra.catalog_db``), the vectors in the index: a search
replica keeps nothing of its own, so several can serve one PostgreSQL catalog and one Qdrant server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from infra.blobs import BlobStore
from infra.catalog_db import CatalogDB, CollectionRow, JobRow
from infra.errors import Conflict, InvalidInput, NotBuilt, NotFound
from infra.periodic import Periodic
from infra.vector_index import Hit, IndexPoint, VectorIndex, physical_name, point_id
from infra.vector_index.base import Filter, check_name, is_uuid

log = logging.getLogger(__name__)
RESERVED = ("blob", "content_hash")
RETRIES = 3  # times an ingest re-embeds when a build starts or swaps between embedding and writing


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    model: str
    version: str
    physical: str
    dim: int
    keyword_fields: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Result:
    id: str
    score: float
    payload: dict[str, Any]
    blob_uri: str
    model: str
    version: str


# (image bytes, model version) -> unit vectors; (texts, version) -> unit vectors
ImageEmbedder = Callable[[Sequence[bytes], str], np.ndarray]
TextEmbedder = Callable[[Sequence[str], str], np.ndarray]


def _check_payloads(n: int, payloads: Sequence[dict[str, Any]]) -> None:
    if n != len(payloads):
        raise InvalidInput("one payload per image")
    for p in payloads:
        if clash := [k for k in RESERVED if k in p]:
            raise InvalidInput(f"payload keys {clash} are reserved")


def _info(row: CollectionRow) -> CollectionInfo:
    return CollectionInfo(row.name, row.model, row.live_version, row.live_physical, row.dim, list(row.keyword_fields))


class Catalog:
    """Every collection of one index, live or being built, with its state in the catalog database."""

    def __init__(self, db: CatalogDB, index: VectorIndex, blobs: BlobStore) -> None:
        self.db = db
        self.index = index
        self.blobs = blobs

    # ---------------------------------------------------------------- metadata
    def row(self, name: str) -> CollectionRow:
        row = self.db.get(name)
        if row is None:
            raise NotFound(f"no collection {name!r}")
        return row

    def info(self, name: str) -> CollectionInfo:
        """The collection as it is live now: name → physical collection → model version."""
        return _info(self.row(name))

    def info_at(self, name: str, version: str | None) -> CollectionInfo:
        """The collection as embedded by ``version``: the live one, or a running (or held shadow) build's
        staging collection; ``None``: the live one. :class:`Conflict` when no index of that version exists."""
        row = self.row(name)
        if version is None or version == row.live_version:
            return _info(row)
        if row.build_physical and row.build_version == version:
            return CollectionInfo(row.name, row.model, version, row.build_physical, row.dim, list(row.keyword_fields))
        building = f"a build of version {row.build_version} is running" if row.build_physical else "no build is running"
        raise NotBuilt(
            f"collection {name!r} has no index of version {version}: it is live on version {row.live_version} and "
            f"{building}; start a shadow build of version {version} (`vlmops reindex {name} --version {version} "
            "--shadow`, or the explorer's button)"
        )

    def list(self) -> list[CollectionInfo]:
        return [_info(r) for r in self.db.all()]

    def count(self, name: str) -> int:
        return self.index.count(self.info(name).physical)

    def status(self) -> list[dict[str, Any]]:
        """Every collection with its item count, running build and reindex job (for lists and metrics)."""
        jobs = self.db.jobs()
        out = []
        for row in self.db.all():
            try:
                count = self.index.count(row.live_physical)
            except NotFound:  # deleted between the two reads
                continue
            build = {"version": row.build_version, "physical": row.build_physical} if row.build_physical else None
            job = jobs.get(row.name)
            out.append({**asdict(_info(row)), "count": count, "build": build, "reindex": job and job.as_dict()})
        return out

    # ---------------------------------------------------------------- lifecycle
    def create(
        self, name: str, model: str, version: str, dim: int, keyword_fields: Sequence[str] = ()
    ) -> CollectionInfo:
        check_name(name)
        physical = physical_name(name, model, version)
        row = CollectionRow(name, model, dim, list(keyword_fields), physical, version, created_at=time.time())
        with self.db.transaction() as conn:
            self.db.insert(conn, row)  # a second creator of the name waits here, then gets 409
            if self.index.exists(physical):  # left behind by a delete that did not finish
                self.index.drop(physical)
            self.index.create(physical, dim, keyword_fields=[*keyword_fields, *RESERVED])
            self.index.set_alias(name, physical)
        return self.info(name)

    def delete(self, name: str) -> None:
        with self.db.locked(name, exclusive=True) as (conn, _):
            dropped = self.db.remove(conn, name)
            self.index.delete_alias(name)
        for physical in dropped:  # after commit: a search that read the row fails cleanly (404)
            self.index.drop(physical)

    # ---------------------------------------------------------------- rebuilds (reindex protocol)
    def start_build(self, name: str, version: str, replace: bool = False) -> dict[str, str]:
        """A staging collection for ``version`` (the same one again if that build is already running).

        ``replace``: a build of another version is abandoned (its job died) and a new one started."""
        with self.db.locked(name, exclusive=True) as (conn, row):
            if row.build_physical and row.build_version == version:
                return {"physical": row.build_physical, "version": version, "live": row.live_physical}
            if row.build_physical and not replace:
                raise Conflict(f"{name!r} is already being rebuilt for version {row.build_version}")
            if version == row.live_version:
                raise Conflict(f"{name!r} is already embedded by version {version}")
            if row.build_physical:
                self.db.forget_physical(conn, row.build_physical)
                self.index.drop(row.build_physical)
            physical = physical_name(name, row.model, version)
            if self.index.exists(physical):  # left over from an aborted build: start clean
                self.index.drop(physical)
            self.index.create(physical, row.dim, keyword_fields=[*row.keyword_fields, *RESERVED])
            self.db.add_physical(conn, physical, name, version)
            self.db.update(conn, name, build_physical=physical, build_version=version, build_started_at=time.time())
        return {"physical": physical, "version": version, "live": row.live_physical}

    def items(self, name: str, cursor: str | None, limit: int) -> tuple[list[IndexPoint], str | None]:
        """A page of the live collection's items (ids and payloads, blob keys included) from ``cursor``,
        and the cursor of the next page: one pass over the collection in all."""
        return self.index.page(self.info(name).physical, cursor, limit, with_vectors=False)

    def write_build(self, name: str, physical: str, points: Sequence[IndexPoint]) -> int:
        with self.db.locked(name, exclusive=False) as (_, row):
            if row.build_physical != physical:
                raise NotFound(f"no running build {physical!r} of {name!r}")
            self.index.upsert(physical, points)
        return self.index.count(physical)

    def finish_build(self, name: str, physical: str) -> CollectionInfo:
        """Swap the alias to the staging collection, atomically, once it holds every live item."""
        with self.db.locked(name, exclusive=True) as (conn, row):
            if row.build_physical != physical or row.build_version is None:
                raise NotFound(f"no running build {physical!r} of {name!r}")
            if missing := self._missing(row.live_physical, physical):
                raise Conflict(f"build {physical!r} lacks {missing} live items: not swapped")
            self.index.set_alias(name, physical)
            self.db.update(
                conn,
                name,
                live_physical=physical,
                live_version=row.build_version,
                build_physical=None,
                build_version=None,
                build_started_at=None,
            )
            self.db.retire(conn, row.live_physical, time.time())
        return self.info(name)

    def _missing(self, live: str, staging: str, batch: int = 4096) -> int:
        """Live items the staging collection lacks: one cursor pass over the live one's ids, a page at a time
        (ids only: no payload or vector is read)."""
        missing, cursor = 0, None
        while True:
            ids, cursor = self.index.id_page(live, cursor, batch)
            missing += len(set(ids) - set(self.index.present(staging, ids))) if ids else 0
            if cursor is None:
                return missing

    def drop_build(self, name: str) -> str | None:
        """Abandon the running (or held shadow) build: its staging collection is dropped; returns its physical
        name (``None``: there was none)."""
        with self.db.locked(name, exclusive=True) as (conn, row):
            if not row.build_physical:
                return None
            self.db.forget_physical(conn, row.build_physical)
            self.db.update(conn, name, build_physical=None, build_version=None, build_started_at=None)
        self.index.drop(row.build_physical)  # after commit: a search that read the row fails cleanly (404)
        return row.build_physical

    def drop_retired(self, grace_s: float) -> list[str]:
        """Drop physical collections retired more than ``grace_s`` ago (searches in flight have finished)."""
        with self.db.transaction() as conn:
            due = self.db.retired_before(conn, time.time() - grace_s)
            for physical in due:
                self.index.drop(physical)
                self.db.forget_physical(conn, physical)
        return due

    # ---------------------------------------------------------------- ingest and search
    def ingest(
        self, name: str, images: Sequence[bytes], payloads: Sequence[dict[str, Any]], embed: ImageEmbedder
    ) -> list[str]:
        """Store, embed (with every target's version) and index images; idempotent by content hash.

        Embedding happens outside any lock; the writes happen under the collection's shared lock, to
        the targets as they are at that moment (the swap waits for them, and a swap or a build start
        that came first is seen), so an item acknowledged here is in the live collection after any
        swap. Returns the ids."""
        _check_payloads(len(images), payloads)
        keys = [self.blobs.put(data) for data in images]
        vectors: dict[str, np.ndarray] = {}
        attempt = 0
        while True:
            for _, version in self.row(name).targets:
                if version not in vectors:
                    vectors[version] = embed(images, version)
            with self.db.locked(name, exclusive=False) as (_, row):
                if attempt < RETRIES and any(v not in vectors for _, v in row.targets):
                    attempt += 1
                    continue  # a build started meanwhile: embed for it too, outside the lock
                for _, version in row.targets:
                    if version not in vectors:  # retries spent: embed under the lock
                        vectors[version] = embed(images, version)
                return self._upsert(row, keys, payloads, vectors)

    def ingest_embedded(
        self, name: str, keys: Sequence[str], payloads: Sequence[dict[str, Any]], vectors: dict[str, np.ndarray]
    ) -> tuple[list[str], list[str]]:
        """Index images already in the blob store (``keys``) with vectors a bulk job made, ``vectors[version]``
        a row per key: ``(ids, [])`` once written to every target; ``([], versions)``, nothing written, when
        a target's version is not among them (a build started: the job embeds for it too and sends again).
        Written under the collection's shared lock, as :meth:`ingest` writes."""
        _check_payloads(len(keys), payloads)
        dim = self.info(name).dim
        for version, rows in vectors.items():
            if rows.shape != (len(keys), dim):
                raise InvalidInput(f"the vectors of version {version} are {rows.shape}, not {len(keys)} rows of {dim}")
        if absent := [k for k in keys if not self.blobs.exists(k)][:3]:
            raise InvalidInput(f"blobs {absent} are not in the blob store: put the images first")
        with self.db.locked(name, exclusive=False) as (_, row):
            if missing := [v for _, v in row.targets if v not in vectors]:
                return [], missing
            return self._upsert(row, keys, payloads, vectors), []

    def _upsert(
        self,
        row: CollectionRow,
        keys: Sequence[str],
        payloads: Sequence[dict[str, Any]],
        vectors: dict[str, np.ndarray],
    ) -> list[str]:
        """Write the items to every target of ``row`` (the caller holds the collection's lock)."""
        ids = [point_id(key) for key in keys]
        stored = [{**payload, "blob": key, "content_hash": key} for key, payload in zip(keys, payloads, strict=True)]
        for physical, version in row.targets:
            rows = vectors[version].tolist()
            self.index.upsert(physical, [IndexPoint(*point) for point in zip(ids, rows, stored, strict=True)])
        return ids

    def known(self, name: str, ids: Sequence[str]) -> list[str]:
        """Those of ``ids`` already in the live collection (a bulk job skips them)."""
        wanted = [i for i in ids if is_uuid(i)]
        return self.index.present(self.info(name).physical, wanted) if wanted else []

    def targets(self, name: str) -> list[str]:
        """The versions an item written now must be embedded by: the live one, and a build's."""
        return [version for _, version in self.row(name).targets]

    def search(
        self,
        name: str,
        embed_query: Callable[[str], np.ndarray],
        top_k: int = 10,
        filter: Filter | None = None,
        score_threshold: float | None = None,
        version: str | None = None,
    ) -> list[Result]:
        """``embed_query(version)`` embeds the query with the version behind the alias at this moment
        (``version``: with that version, in the staging collection of its build)."""
        info = self.info_at(name, version)
        vector = embed_query(info.version)
        return self.search_vector(info, vector, top_k, filter, score_threshold)

    def _point(self, info: CollectionInfo, item_id: str) -> IndexPoint:
        found = self.index.get(info.physical, [item_id]) if is_uuid(item_id) else []  # ids are UUIDs
        if not found:
            raise NotFound(f"collection {info.name!r} has no item {item_id!r} (version {info.version})")
        return found[0]

    def vector_of(self, name: str, item_id: str, version: str | None = None) -> tuple[CollectionInfo, np.ndarray]:
        """An item's stored vector, for "more like this" (same physical collection, same version)."""
        info = self.info_at(name, version)
        return info, np.asarray(self._point(info, item_id).vector, dtype=np.float32)

    def blob_of(self, name: str, item_id: str) -> str:
        """The blob key of an item of the live collection (its original image, for a thumbnail)."""
        return str(self._point(self.info(name), item_id).payload.get("blob", ""))

    def search_vector(
        self, info: CollectionInfo, vector: np.ndarray, top_k: int, filter: Filter | None, threshold: float | None
    ) -> list[Result]:
        try:
            hits = self.index.search(info.physical, vector.tolist(), top_k, filter, threshold)
        except NotFound as exc:  # deleted (or its version dropped) between reading the row and searching
            raise NotFound(f"collection {info.name!r} was deleted while it was being searched") from exc
        return [self._result(h, info) for h in hits]

    def _result(self, hit: Hit, info: CollectionInfo) -> Result:
        payload = {k: v for k, v in hit.payload.items() if k not in RESERVED}
        return Result(
            hit.id, hit.score, payload, self.blobs.uri(str(hit.payload.get("blob", ""))), info.model, info.version
        )


def as_dict(result: Result | CollectionInfo | JobRow) -> dict[str, Any]:
    return asdict(result)


class Janitor(Periodic):
    """Drops replaced physical collections once they have been retired ``grace_s`` (searches that
    read the old row have finished by then), checking every ``interval_s``; ``on_pass`` runs after
    each pass (the search service refreshes its catalog gauges there)."""

    def __init__(
        self,
        catalog: Catalog,
        grace_s: float,
        interval_s: float | None = None,
        on_pass: Callable[[], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.grace_s = grace_s
        self.on_pass = on_pass
        super().__init__(
            "janitor", interval_s if interval_s is not None else max(1.0, min(30.0, grace_s / 2)), self.pass_
        )

    def pass_(self) -> None:
        if dropped := self.catalog.drop_retired(self.grace_s):
            log.info("dropped retired collections %s", dropped)
        if self.on_pass is not None:
            self.on_pass()
