"""Qdrant Edge: the Qdrant engine in-process (HNSW, payload indexes, WAL) on disk under a folder.

One EdgeShard per physical collection under ``<root>/collections/``. Qdrant Edge has no aliases:
they live in ``<root>/aliases.json``, replaced atomically (write a temporary file, ``os.replace``),
which gives the same semantics as Qdrant's alias switch. Owned by one process.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import qdrant_edge as qe

from infra.errors import InvalidInput, NotFound
from infra.vector_index.base import HNSW_EF, HNSW_EF_CONSTRUCT, HNSW_M, Filter, Hit, IndexPoint, VectorIndex


def _floats(vector: Sequence[float]) -> list[float]:
    """A vector as the list of Python floats Edge takes (``ndarray.tolist`` gives one already)."""
    if isinstance(vector, list) and (not vector or type(vector[0]) is float):
        return vector
    return [float(x) for x in vector]


def _filter(conditions: Filter | None) -> qe.Filter | None:
    if not conditions:
        return None
    return qe.Filter(must=[qe.FieldCondition(k, match=qe.MatchValue(v)) for k, v in conditions.items()])


class EdgeIndex(VectorIndex):
    def __init__(
        self, root: Path, m: int = HNSW_M, ef_construct: int = HNSW_EF_CONSTRUCT, hnsw_ef: int = HNSW_EF
    ) -> None:
        """``m`` and ``ef_construct`` apply to collections created from now on, ``hnsw_ef`` to searches."""
        self.root = root
        self.m, self.ef_construct, self.hnsw_ef = m, ef_construct, hnsw_ef
        (root / "collections").mkdir(parents=True, exist_ok=True)
        self._shards: dict[str, qe.EdgeShard] = {}
        self._lock = threading.RLock()

    def _path(self, physical: str) -> Path:
        return self.root / "collections" / physical

    def _shard(self, physical: str) -> qe.EdgeShard:
        with self._lock:
            shard = self._shards.get(physical)
            if shard is None:
                if not self._path(physical).is_dir():
                    raise NotFound(f"no collection {physical!r}")
                shard = self._shards[physical] = qe.EdgeShard.load(str(self._path(physical)))
            return shard

    def create(self, physical: str, dim: int, keyword_fields: Sequence[str] = ()) -> None:
        with self._lock:
            if self._path(physical).exists():
                raise InvalidInput(f"collection {physical!r} exists")
            config = qe.EdgeConfig(
                vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
                hnsw_config=qe.HnswIndexConfig(m=self.m, ef_construct=self.ef_construct, full_scan_threshold=10_000),
            )
            shard = self._shards[physical] = qe.EdgeShard.create(str(self._path(physical)), config)
            for name in keyword_fields:
                shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Keyword))
            shard.flush()

    def drop(self, physical: str) -> None:
        with self._lock:
            shard = self._shards.pop(physical, None)
            if shard is not None:
                shard.close()
            shutil.rmtree(self._path(physical), ignore_errors=True)

    def exists(self, physical: str) -> bool:
        return self._path(physical).is_dir()

    def physical_collections(self) -> list[str]:
        return sorted(p.name for p in (self.root / "collections").iterdir() if p.is_dir())

    def upsert(self, physical: str, points: Sequence[IndexPoint]) -> None:
        if points:
            ops = [qe.Point(p.id, _floats(p.vector), dict(p.payload)) for p in points]
            shard = self._shard(physical)
            shard.update(qe.UpdateOperation.upsert_points(ops))
            shard.flush()

    def delete(self, physical: str, ids: Sequence[str]) -> None:
        if ids:
            shard = self._shard(physical)
            shard.update(qe.UpdateOperation.delete_points(list(ids)))
            shard.flush()

    def count(self, physical: str) -> int:
        return int(self._shard(physical).count(qe.CountRequest(exact=True)))

    def search(
        self,
        physical: str,
        vector: Sequence[float],
        top_k: int = 10,
        filter: Filter | None = None,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        request = qe.QueryRequest(
            limit=top_k,
            query=qe.Query.Nearest([float(x) for x in vector]),
            with_payload=True,
            filter=_filter(filter),
            score_threshold=score_threshold,
            params=qe.SearchParams(hnsw_ef=self.hnsw_ef),
        )
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in self._shard(physical).query(request)]

    def get(self, physical: str, ids: Sequence[str]) -> list[IndexPoint]:
        records = self._shard(physical).retrieve(list(ids), with_payload=True, with_vector=True)
        return [IndexPoint(str(r.id), list(r.vector or []), dict(r.payload or {})) for r in records]  # type: ignore[arg-type]

    def present(self, physical: str, ids: Sequence[str]) -> list[str]:
        records = self._shard(physical).retrieve(list(ids), with_payload=False, with_vector=False)
        return [str(r.id) for r in records]

    def id_page(self, physical: str, cursor: str | None = None, limit: int = 1024) -> tuple[list[str], str | None]:
        records, offset = self._shard(physical).scroll(
            qe.ScrollRequest(offset=cursor, limit=limit, with_payload=False, with_vector=False)
        )
        return [str(r.id) for r in records], None if offset is None else str(offset)

    def page(
        self, physical: str, cursor: str | None = None, limit: int = 256, with_vectors: bool = True
    ) -> tuple[list[IndexPoint], str | None]:
        records, offset = self._shard(physical).scroll(
            qe.ScrollRequest(offset=cursor, limit=limit, with_payload=True, with_vector=with_vectors)
        )
        points = [IndexPoint(str(r.id), list(r.vector or []), dict(r.payload or {})) for r in records]  # type: ignore[arg-type]
        return points, None if offset is None else str(offset)

    # aliases: a JSON manifest replaced atomically
    def _aliases(self) -> dict[str, str]:
        file = self.root / "aliases.json"
        return json.loads(file.read_text()) if file.is_file() else {}

    def _write_aliases(self, aliases: dict[str, str]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".aliases-")
        with os.fdopen(fd, "w") as out:
            json.dump(aliases, out, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.root / "aliases.json")

    def set_alias(self, alias: str, physical: str) -> None:
        with self._lock:
            if not self.exists(physical):
                raise NotFound(f"no collection {physical!r}")
            self._write_aliases({**self._aliases(), alias: physical})

    def resolve(self, alias: str) -> str | None:
        return self._aliases().get(alias)

    def delete_alias(self, alias: str) -> None:
        with self._lock:
            aliases = self._aliases()
            aliases.pop(alias, None)
            self._write_aliases(aliases)

    def close(self) -> None:
        with self._lock:
            for shard in self._shards.values():
                shard.close()
            self._shards.clear()
