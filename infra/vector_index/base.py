"""The vector index interface every backend implements, and the naming of physical collections."""

from __future__ import annotations

import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from infra.errors import InvalidInput

HNSW_M = 16  # edges per node of the HNSW graph (twice that on the bottom layer)
HNSW_EF_CONSTRUCT = 100  # beam while building the graph: graph quality against build time
HNSW_EF = 128  # search-time beam of the HNSW graph: recall against latency
Filter = dict[str, str | int | bool]  # exact matches on payload fields, all of them must hold
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class IndexPoint:
    id: str  # a UUID (see point_id)
    vector: Sequence[float]
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


def point_id(content_hash: str) -> str:
    """The point id of an item: a UUID derived from its content hash, so ingest is idempotent."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"vlmops:{content_hash}"))


def is_uuid(text: str) -> bool:
    """Point ids (and so scroll cursors) are UUIDs; anything else is refused before it reaches the index."""
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidInput(
            f"collection name {name!r}: use 1-63 of a-z, 0-9, '_' and '-', starting with a letter or digit"
        )
    return name


def physical_name(collection: str, model: str, version: str, build: str = "") -> str:
    """``<collection>__<model>-v<version>[__<build>]``: a person can tell what a physical collection holds."""
    base = f"{check_name(collection)}__{model}-v{version}"
    return f"{base}__{build}" if build else base


class VectorIndex(ABC):
    """Physical collections of unit vectors (cosine) with payloads, and aliases naming them."""

    @abstractmethod
    def create(self, physical: str, dim: int, keyword_fields: Sequence[str] = ()) -> None:
        """Create an empty collection; payload indexes on ``keyword_fields``."""

    @abstractmethod
    def drop(self, physical: str) -> None: ...

    @abstractmethod
    def exists(self, physical: str) -> bool: ...

    @abstractmethod
    def physical_collections(self) -> list[str]: ...

    @abstractmethod
    def upsert(self, physical: str, points: Sequence[IndexPoint]) -> None: ...

    @abstractmethod
    def delete(self, physical: str, ids: Sequence[str]) -> None: ...

    @abstractmethod
    def count(self, physical: str) -> int: ...

    @abstractmethod
    def search(
        self,
        physical: str,
        vector: Sequence[float],
        top_k: int = 10,
        filter: Filter | None = None,
        score_threshold: float | None = None,
    ) -> list[Hit]: ...

    @abstractmethod
    def get(self, physical: str, ids: Sequence[str]) -> list[IndexPoint]:
        """The points with these ids (vectors and payloads); unknown ids are left out."""

    @abstractmethod
    def present(self, physical: str, ids: Sequence[str]) -> list[str]:
        """Those of ``ids`` the collection holds (ids only: no payload or vector is read)."""

    @abstractmethod
    def id_page(self, physical: str, cursor: str | None = None, limit: int = 1024) -> tuple[list[str], str | None]:
        """As :meth:`page`, ids only (no payload or vector is read)."""

    @abstractmethod
    def page(
        self, physical: str, cursor: str | None = None, limit: int = 256, with_vectors: bool = True
    ) -> tuple[list[IndexPoint], str | None]:
        """Up to ``limit`` points in id order from ``cursor`` (``None``: the first), and the cursor of the
        next page (``None``: that was the last). Each page is one ordered range read of the index, so
        paging through n points costs O(n) in all."""

    def scroll(self, physical: str, batch: int = 256, with_vectors: bool = True) -> Iterator[IndexPoint]:
        """Every point with its payload (and vector), page by page."""
        cursor: str | None = None
        while True:
            points, cursor = self.page(physical, cursor, batch, with_vectors)
            yield from points
            if cursor is None:
                return

    @abstractmethod
    def set_alias(self, alias: str, physical: str) -> None:
        """Point ``alias`` at ``physical`` atomically: readers see the old target or the new one."""

    @abstractmethod
    def resolve(self, alias: str) -> str | None: ...

    @abstractmethod
    def delete_alias(self, alias: str) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional for backends without resources
        """Release files and connections."""
