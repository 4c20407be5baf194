"""The search service's gauges of its collections and their rebuilds (``/metrics``; the dashboard reads them)."""

from __future__ import annotations

import bentoml

ITEMS = bentoml.metrics.Gauge(
    name="vlmops_collection_items",
    documentation="items in the live physical collection (0 for a version it has left)",
    labelnames=["collection", "version"],
    multiprocess_mode="mostrecent",
)
LIVE = bentoml.metrics.Gauge(
    name="vlmops_collection_live",
    documentation="1 for the model version that embedded the collection's live items (its queries are "
    "embedded by it too); 0 for a version it has left",
    labelnames=["collection", "model", "version"],
    multiprocess_mode="mostrecent",
)
REINDEX_FAILURES = bentoml.metrics.Gauge(
    name="vlmops_reindex_failures",
    documentation="consecutive failed reindex attempts of the collection (0: the last one succeeded)",
    labelnames=["collection"],
    multiprocess_mode="mostrecent",
)
REINDEX_ACTIVE = bentoml.metrics.Gauge(
    name="vlmops_reindex_active",
    documentation="1 while a reindex of the collection is queued or running",
    labelnames=["collection"],
    multiprocess_mode="mostrecent",
)
