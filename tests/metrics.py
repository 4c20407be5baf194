"""Reading BentoML's Prometheus metrics in tests."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def batched(url: str, method: str) -> bool:
    """True when the batcher ran ``method`` on at least one batch of more than one item."""
    metrics = httpx.get(f"{url}/metrics").text
    buckets = {
        float(sample.labels["le"]): sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "vlmops_batch_size"
        for sample in family.samples
        if sample.name.endswith("_bucket") and sample.labels.get("operation") == method
    }
    if not buckets:
        raise AssertionError(f"no vlmops_batch_size histogram for {method}: {metrics[:1000]}")
    return max(buckets.values()) > buckets[1.0]


def samples(url: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` (a counter's with its ``_total``) whose labels include ``labels``
    (0 when there is none)."""
    metrics = httpx.get(f"{url}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )
