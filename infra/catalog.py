"""Collections: which registered model each uses, which physical collection (and so which model
version) is live behind its alias, and the ingest / search operations on them.

The invariant lives here: a query is embedded by the version of the physical collection it
searches. A search resolves the alias once and uses that one physical collection and its version
for both the embedding and the lookup.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from infra.blobs import BlobStore
from infra.errors import InvalidInput, NotFound
from infra.vector_index import Hit, IndexPoint, VectorIndex, physical_name, point_id
from infra.vector_index.base import Filter, check_name

log = logging.getLogger(__name__)
RESERVED = ("blob", "content_hash")


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


class Catalog:
    """Owns every collection of one index (live or being built): the only writer."""

    def __init__(self, root: Path, index: VectorIndex, blobs: BlobStore) -> None:
        self.root = root
        self.index = index
        self.blobs = blobs
        self._lock = threading.RLock()
        root.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- metadata
    def _file(self) -> Path:
        return self.root / "collections.json"

    def _read(self) -> dict[str, dict[str, Any]]:
        return json.loads(self._file().read_text()) if self._file().is_file() else {}

    def _write(self, data: dict[str, dict[str, Any]]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".collections-")
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=2, sort_keys=True)
        os.replace(tmp, self._file())

    def info(self, name: str) -> CollectionInfo:
        """The collection as it is live now: alias → physical collection → model version."""
        meta = self._read().get(name)
        physical = self.index.resolve(name)
        if meta is None or physical is None:
            raise NotFound(f"no collection {name!r}")
        return CollectionInfo(
            name=name,
            model=meta["model"],
            version=self._version_of(physical, meta),
            physical=physical,
            dim=int(meta["dim"]),
            keyword_fields=list(meta.get("keyword_fields", [])),
        )

    @staticmethod
    def _version_of(physical: str, meta: dict[str, Any]) -> str:
        versions = meta.get("versions", {})
        if physical not in versions:
            raise NotFound(f"collection {meta['name']!r} points at {physical!r}, which it does not know")
        return str(versions[physical])

    def list(self) -> list[CollectionInfo]:
        out = []
        for name in sorted(self._read()):
            try:
                out.append(self.info(name))
            except NotFound:
                continue
        return out

    def count(self, name: str) -> int:
        return self.index.count(self.info(name).physical)

    # ---------------------------------------------------------------- lifecycle
    def create(
        self, name: str, model: str, version: str, dim: int, keyword_fields: Sequence[str] = ()
    ) -> CollectionInfo:
        check_name(name)
        with self._lock:
            data = self._read()
            if name in data:
                raise InvalidInput(f"collection {name!r} exists")
            physical = physical_name(name, model, version)
            self.index.create(physical, dim, keyword_fields=[*keyword_fields, *RESERVED])
            meta = {"name": name, "model": model, "dim": dim, "keyword_fields": list(keyword_fields)}
            data[name] = {**meta, "versions": {physical: version}}
            self._write(data)
            self.index.set_alias(name, physical)
        return self.info(name)

    def delete(self, name: str) -> None:
        with self._lock:
            data = self._read()
            meta = data.pop(name, None)
            if meta is None:
                raise NotFound(f"no collection {name!r}")
            self.index.delete_alias(name)
            self._write(data)
            for physical in meta.get("versions", {}):
                self.index.drop(physical)

    # ---------------------------------------------------------------- rebuilds (reindex protocol)
    def start_build(self, name: str, version: str) -> dict[str, str]:
        """A staging collection for ``version`` (the same one again if that build is already running)."""
        with self._lock:
            info = self.info(name)
            data = self._read()
            meta = data[name]
            build = meta.get("build")
            if build and build["version"] == version:
                return dict(build)
            if build:
                raise InvalidInput(f"{name!r} is already being rebuilt for version {build['version']}")
            if version == info.version:
                raise InvalidInput(f"{name!r} is already embedded by version {version}")
            physical = physical_name(name, info.model, version)
            if self.index.exists(physical):  # left over from an aborted build: start clean
                self.index.drop(physical)
            self.index.create(physical, info.dim, keyword_fields=[*info.keyword_fields, *RESERVED])
            meta["build"] = {"physical": physical, "version": version, "live": info.physical}
            meta.setdefault("versions", {})[physical] = version
            self._write(data)
            return dict(meta["build"])

    def items(self, name: str, offset: int, limit: int) -> list[IndexPoint]:
        """A page of the live collection's items (ids and payloads, blob keys included), in a stable order."""
        info = self.info(name)
        ids = sorted(p.id for p in self.index.scroll(info.physical))
        return [IndexPoint(p.id, [], p.payload) for p in self.index.get(info.physical, ids[offset : offset + limit])]

    def write_build(self, name: str, physical: str, points: Sequence[IndexPoint]) -> int:
        build = self._read().get(name, {}).get("build")
        if not build or build["physical"] != physical:
            raise NotFound(f"no running build {physical!r} of {name!r}")
        self.index.upsert(physical, points)
        return self.index.count(physical)

    def finish_build(self, name: str, physical: str) -> CollectionInfo:
        """Swap the alias to the staging collection, atomically, once it holds every live item."""
        with self._lock:
            data = self._read()
            meta = data.get(name, {})
            build = meta.get("build")
            if not build or build["physical"] != physical:
                raise NotFound(f"no running build {physical!r} of {name!r}")
            live_ids = {p.id for p in self.index.scroll(build["live"])}
            staged = {p.id for p in self.index.get(physical, sorted(live_ids))}
            if missing := live_ids - staged:
                raise InvalidInput(f"build {physical!r} lacks {len(missing)} live items: not swapped")
            self.index.set_alias(name, physical)
            meta.pop("build")
            meta.setdefault("retired", {})[build["live"]] = time.time()
            self._write(data)
        return self.info(name)

    def drop_retired(self, grace_s: float) -> list[str]:
        """Drop physical collections retired more than ``grace_s`` ago (searches in flight have finished)."""
        dropped = []
        with self._lock:
            data = self._read()
            for meta in data.values():
                for physical, since in list(meta.get("retired", {}).items()):
                    if time.time() - since >= grace_s:
                        self.index.drop(physical)
                        meta["retired"].pop(physical)
                        meta.get("versions", {}).pop(physical, None)
                        dropped.append(physical)
            self._write(data)
        return dropped

    # ---------------------------------------------------------------- ingest and search
    def ingest(
        self, name: str, images: Sequence[bytes], payloads: Sequence[dict[str, Any]], embed: ImageEmbedder
    ) -> list[str]:
        """Store, embed (with the live version) and index images; idempotent by content hash. Returns ids."""
        if len(images) != len(payloads):
            raise InvalidInput("one payload per image")
        for p in payloads:
            if clash := [k for k in RESERVED if k in p]:
                raise InvalidInput(f"payload keys {clash} are reserved")
        info = self.info(name)
        keys = [self.blobs.put(data) for data in images]
        targets = [(info.physical, info.version)]
        build = self._read()[name].get("build")
        if build:  # a rebuild is running: new items go into the staging collection too, with its version
            targets.append((build["physical"], build["version"]))
        ids: list[str] = []
        for physical, version in targets:
            vectors = embed(images, version)
            points = [
                IndexPoint(point_id(key), vec.tolist(), {**payload, "blob": key, "content_hash": key})
                for key, vec, payload in zip(keys, vectors, payloads, strict=True)
            ]
            self.index.upsert(physical, points)
            ids = [p.id for p in points]
        return ids

    def search(
        self,
        name: str,
        embed_query: Callable[[str], np.ndarray],
        top_k: int = 10,
        filter: Filter | None = None,
        score_threshold: float | None = None,
    ) -> list[Result]:
        """``embed_query(version)`` embeds the query with the version behind the alias at this moment."""
        info = self.info(name)
        vector = embed_query(info.version)
        return self.search_vector(info, vector, top_k, filter, score_threshold)

    def vector_of(self, name: str, item_id: str) -> tuple[CollectionInfo, np.ndarray]:
        """An item's stored vector, for "more like this" (same physical collection, same version)."""
        info = self.info(name)
        found = self.index.get(info.physical, [item_id])
        if not found:
            raise NotFound(f"collection {name!r} has no item {item_id!r}")
        return info, np.asarray(found[0].vector, dtype=np.float32)

    def search_vector(
        self, info: CollectionInfo, vector: np.ndarray, top_k: int, filter: Filter | None, threshold: float | None
    ) -> list[Result]:
        try:
            hits = self.index.search(info.physical, vector.tolist(), top_k, filter, threshold)
        except NotFound as exc:  # deleted (or its version dropped) between resolving the alias and searching
            raise NotFound(f"collection {info.name!r} was deleted while it was being searched") from exc
        return [self._result(h, info) for h in hits]

    def _result(self, hit: Hit, info: CollectionInfo) -> Result:
        payload = {k: v for k, v in hit.payload.items() if k not in RESERVED}
        return Result(
            hit.id, hit.score, payload, self.blobs.uri(str(hit.payload.get("blob", ""))), info.model, info.version
        )


def as_dict(result: Result | CollectionInfo) -> dict[str, Any]:
    return asdict(result)


class Janitor:
    """Drops replaced physical collections once they have been retired ``grace_s`` (searches that
    resolved the old alias have finished by then), checking every ``interval_s``."""

    def __init__(self, catalog: Catalog, grace_s: float, interval_s: float | None = None) -> None:
        self.catalog = catalog
        self.grace_s = grace_s
        self.interval_s = interval_s if interval_s is not None else max(1.0, min(30.0, grace_s / 2))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vlmops-janitor", daemon=True)

    def start(self) -> Janitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if dropped := self.catalog.drop_retired(self.grace_s):
                    log.info("dropped retired collections %s", dropped)
            except Exception:  # noqa: BLE001 - the janitor must outlive one failed pass
                log.exception("dropping retired collections failed; trying again later")
