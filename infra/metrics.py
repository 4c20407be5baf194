"""Gauges whose set of series changes: the versions a service holds, a collection's live version.

A BentoML service's metrics are kept in ``prometheus_client``'s multiprocess files, where a series
cannot be dropped: ``remove()`` forgets it in this process, but its last value stays in the file and
``/metrics`` goes on exporting it. So a series that no longer holds is set to 0 instead, and queries
select the ones at 1 (or above 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

Labels = tuple[str, ...]


class LabelledGauge(Protocol):
    def labels(self, *values: Any) -> Any: ...


class SeriesSet:
    """The series of ``gauge`` that hold now; :meth:`publish` sets them and zeroes those that held before.
    Not thread-safe: a caller publishes under its own lock."""

    def __init__(self, gauge: LabelledGauge) -> None:
        self.gauge = gauge
        self._held: set[Labels] = set()

    def publish(self, values: Mapping[Labels, float]) -> None:
        for labels in self._held - values.keys():
            self.gauge.labels(*labels).set(0)
        for labels, value in values.items():
            self.gauge.labels(*labels).set(value)
        self._held = set(values)
