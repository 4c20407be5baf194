"""Collections: which registered model each uses, which physical collection (and so which model
version) is live behind its alias, and the ingest / search operations on them.

The invariant lives here: a query is embedded by the version of the physical collection it
searches. A search resolves the alias once and uses that one physical collection and its version
for both the embedding and the lookup.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from infra.blobs import BlobStore
from infra.errors import InvalidInput, NotFound
from infra.vector_index import Hit, IndexPoint, VectorIndex, physical_name, point_id
from infra.vector_index.base import Filter, check_name

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
        vectors = embed(images, info.version)
        keys = [self.blobs.put(data) for data in images]
        points = [
            IndexPoint(point_id(key), vec.tolist(), {**payload, "blob": key, "content_hash": key})
            for key, vec, payload in zip(keys, vectors, payloads, strict=True)
        ]
        self.index.upsert(info.physical, points)
        return [p.id for p in points]

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
        hits = self.index.search(info.physical, vector.tolist(), top_k, filter, score_threshold)
        return [self._result(h, info) for h in hits]

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
        hits = self.index.search(info.physical, vector.tolist(), top_k, filter, threshold)
        return [self._result(h, info) for h in hits]

    def _result(self, hit: Hit, info: CollectionInfo) -> Result:
        payload = {k: v for k, v in hit.payload.items() if k not in RESERVED}
        return Result(
            hit.id, hit.score, payload, self.blobs.uri(str(hit.payload.get("blob", ""))), info.model, info.version
        )


def as_dict(result: Result | CollectionInfo) -> dict[str, Any]:
    return asdict(result)
