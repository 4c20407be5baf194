"""Vector index backends behind one interface: Qdrant Edge in-process (embedded default) and a Qdrant
server through qdrant-client (scaled). One physical collection per (collection name, model version),
one alias per collection name, switched atomically."""

from __future__ import annotations

from infra.settings import Settings
from infra.vector_index.base import Hit, IndexPoint, VectorIndex, physical_name, point_id


def open_index(settings: Settings) -> VectorIndex:
    """The backend settings choose: a Qdrant server at VLMOPS_QDRANT_URL, else Qdrant Edge at VLMOPS_INDEX_PATH."""
    if settings.qdrant_url:
        from qdrant_client import QdrantClient

        from infra.vector_index.server import ServerIndex

        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return ServerIndex(QdrantClient(url=settings.qdrant_url, api_key=key))
    from infra.vector_index.edge import EdgeIndex

    return EdgeIndex(settings.index_dir)


__all__ = ["Hit", "IndexPoint", "VectorIndex", "open_index", "physical_name", "point_id"]
