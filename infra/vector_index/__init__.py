"""Vector index backends behind one interface: Qdrant Edge in-process (embedded default) and a Qdrant
server through qdrant-client (scaled). One physical collection per (collection name, model version),
one alias per collection name, switched atomically."""

from __future__ import annotations

from infra.vector_index.base import Hit, IndexPoint, VectorIndex, physical_name, point_id

__all__ = ["Hit", "IndexPoint", "VectorIndex", "physical_name", "point_id"]
