"""A Qdrant server or cluster through qdrant-client, with Qdrant's native collection aliases.

Tests run this code path against qdrant-client's local mode (``QdrantClient(path=...)``) as the
server's stand-in; production passes ``QdrantClient(url=VLMOPS_QDRANT_URL)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from qdrant_client import QdrantClient
from qdrant_client import models as qm

from infra.errors import InvalidInput, NotFound
from infra.vector_index.base import HNSW_EF, HNSW_EF_CONSTRUCT, HNSW_M, Filter, Hit, IndexPoint, VectorIndex


def _filter(conditions: Filter | None) -> qm.Filter | None:
    if not conditions:
        return None
    return qm.Filter(must=[qm.FieldCondition(key=k, match=qm.MatchValue(value=v)) for k, v in conditions.items()])


class ServerIndex(VectorIndex):
    def __init__(self, client: QdrantClient) -> None:
        self.client = client

    def _require(self, physical: str) -> None:
        if not self.client.collection_exists(physical):
            raise NotFound(f"no collection {physical!r}")

    def create(self, physical: str, dim: int, keyword_fields: Sequence[str] = ()) -> None:
        if self.client.collection_exists(physical):
            raise InvalidInput(f"collection {physical!r} exists")
        self.client.create_collection(
            physical,
            vectors_config=qm.VectorParams(size=dim, distance=qm.Distance.COSINE),
            hnsw_config=qm.HnswConfigDiff(m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT),
        )
        for name in keyword_fields:
            self.client.create_payload_index(physical, name, qm.PayloadSchemaType.KEYWORD)

    def drop(self, physical: str) -> None:
        self.client.delete_collection(physical)

    def exists(self, physical: str) -> bool:
        return bool(self.client.collection_exists(physical))

    def physical_collections(self) -> list[str]:
        return sorted(c.name for c in self.client.get_collections().collections)

    def upsert(self, physical: str, points: Sequence[IndexPoint]) -> None:
        self._require(physical)
        if points:
            structs = [qm.PointStruct(id=p.id, vector=list(p.vector), payload=dict(p.payload)) for p in points]
            self.client.upsert(physical, structs, wait=True)

    def delete(self, physical: str, ids: Sequence[str]) -> None:
        self._require(physical)
        if ids:
            self.client.delete(physical, qm.PointIdsList(points=list(ids)), wait=True)

    def count(self, physical: str) -> int:
        self._require(physical)
        return int(self.client.count(physical, exact=True).count)

    def search(
        self,
        physical: str,
        vector: Sequence[float],
        top_k: int = 10,
        filter: Filter | None = None,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        self._require(physical)
        found = self.client.query_points(
            physical,
            query=list(vector),
            limit=top_k,
            query_filter=_filter(filter),
            score_threshold=score_threshold,
            with_payload=True,
            search_params=qm.SearchParams(hnsw_ef=HNSW_EF),
        ).points
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in found]

    def get(self, physical: str, ids: Sequence[str]) -> list[IndexPoint]:
        self._require(physical)
        records = self.client.retrieve(physical, list(ids), with_payload=True, with_vectors=True)
        return [IndexPoint(str(r.id), list(r.vector or []), dict(r.payload or {})) for r in records]  # type: ignore[arg-type]

    def present(self, physical: str, ids: Sequence[str]) -> list[str]:
        self._require(physical)
        return [str(r.id) for r in self.client.retrieve(physical, list(ids), with_payload=False, with_vectors=False)]

    def id_page(self, physical: str, cursor: str | None = None, limit: int = 1024) -> tuple[list[str], str | None]:
        self._require(physical)
        records, offset = self.client.scroll(
            physical, limit=limit, offset=cursor, with_payload=False, with_vectors=False
        )
        return [str(r.id) for r in records], None if offset is None else str(offset)

    def page(
        self, physical: str, cursor: str | None = None, limit: int = 256, with_vectors: bool = True
    ) -> tuple[list[IndexPoint], str | None]:
        self._require(physical)
        records, offset = self.client.scroll(
            physical, limit=limit, offset=cursor, with_payload=True, with_vectors=with_vectors
        )
        points = [IndexPoint(str(r.id), list(r.vector or []), dict(r.payload or {})) for r in records]  # type: ignore[arg-type]
        return points, None if offset is None else str(offset)

    def set_alias(self, alias: str, physical: str) -> None:
        self._require(physical)
        ops: list[qm.CreateAliasOperation | qm.DeleteAliasOperation] = []
        if self.resolve(alias) is not None:
            ops.append(qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=alias)))
        ops.append(qm.CreateAliasOperation(create_alias=qm.CreateAlias(collection_name=physical, alias_name=alias)))
        self.client.update_collection_aliases(change_aliases_operations=ops)  # one request: atomic on the server

    def resolve(self, alias: str) -> str | None:
        for a in self.client.get_aliases().aliases:
            if a.alias_name == alias:
                return str(a.collection_name)
        return None

    def delete_alias(self, alias: str) -> None:
        if self.resolve(alias) is not None:
            self.client.update_collection_aliases(
                change_aliases_operations=[qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=alias))]
            )

    def close(self) -> None:
        self.client.close()
