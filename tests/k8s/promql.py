"""What a Grafana dashboard queries and what a process exports: metric names out of PromQL
expressions, and the series names a ``/metrics`` page can hold."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# words of PromQL that are not metric names where they stand without a "(" after them
KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right",
    "inf", "nan", "atan2", "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")  # Grafana's: $__rate_interval, ${datasource}
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
WORD = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
LABEL_VALUES = re.compile(r"\s*label_values\((?P<args>.*)\)\s*", re.S)
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects: what is left once strings, Grafana variables, label matchers,
    ranges and grouping lists are taken out, less functions (a word before "("), keywords and the
    letters of numbers (``1e3``, ``5m``)."""
    text = STRING.sub('""', expr)
    text = VARIABLE.sub("", text)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = GROUPING.sub(" ", text)
    names = set()
    for match in WORD.finditer(text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":
            continue
        if text[match.end() :].lstrip().startswith("(") or match.group() in KEYWORDS:
            continue
        names.add(match.group())
    return names


def variable_names(query: str) -> set[str]:
    """Metric names of a Grafana Prometheus variable query (``label_values(selector, label)``; a
    ``label_values(label)`` of one argument names no metric)."""
    match = LABEL_VALUES.fullmatch(query)
    if match is None:
        raise ValueError(f"not a label_values query: {query!r}")
    selector, comma, _label = match["args"].rpartition(",")
    return metric_names(selector) if comma else set()


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def rows(dashboard: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each row's title and the panels under it (to the next row)."""
    out: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            current = out.setdefault(panel["title"], list(panel.get("panels", [])))
        else:
            current.append(panel)
    return out


def panel_names(items: Iterable[dict[str, Any]]) -> set[str]:
    """Every metric name the targets of these panels query."""
    return {name for panel in items for target in panel.get("targets", []) for name in metric_names(target["expr"])}


def dashboard_names(dashboard: dict[str, Any]) -> set[str]:
    """Every metric name the dashboard's panels and its variables query."""
    found = panel_names(panels(dashboard))
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            found |= variable_names(query["query"] if isinstance(query, dict) else query)
    return found


def exported(text: str) -> set[str]:
    """The series names a ``/metrics`` page can hold, from its ``# TYPE`` lines: each family's base
    name with the suffixes of its type (a counter's TYPE line may carry ``_total`` already)."""
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        if kind == "counter":
            name = name.removesuffix("_total")
        names |= {name + suffix for suffix in SUFFIXES.get(kind, ("",))}
    return names


def sample_names(text: str) -> set[str]:
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def value(text: str, name: str, **labels: str) -> float | None:
    """The sum of the samples ``name`` whose labels include ``labels``; None when there is none."""
    found = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]
    return sum(found) if found else None
