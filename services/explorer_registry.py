"""The explorer's registry view, read from MLflow: each model's versions (aliases, lineage, gate metrics,
the datasets each was evaluated on), its production history, and the per-class table of two versions
on a dataset both were evaluated on (from their ``eval.<hash>`` tags, as the gate stores them)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from infra.errors import InvalidInput, NotFound
from registry.gate import EVAL_TAG_PREFIX, StoredEval
from registry.store import RegistryStore, VersionInfo

LINEAGE = ("family", "arch", "base", "base_version", "dataset_hash", "embed_dim", "image_size")


def _evals(info: VersionInfo) -> dict[str, StoredEval]:
    out = {}
    for key, raw in info.tags.items():
        if key.startswith(EVAL_TAG_PREFIX):
            try:
                out[key.removeprefix(EVAL_TAG_PREFIX)] = StoredEval.parse(raw)
            except (ValueError, KeyError, TypeError):
                continue  # a tag this release cannot read: left out of the view
    return out


def _dataset_name(raw: str) -> str:
    try:
        return str(json.loads(raw).get("dataset", ""))
    except (ValueError, AttributeError):
        return ""


def _class_metrics(per_class: dict[str, dict[str, float]]) -> list[str]:
    """The class-query metrics present, in table order: R@K and P@K by K, then R-Precision."""
    names = {k for row in per_class.values() for k in row if k.startswith("class_")}

    def order(name: str) -> tuple[int, int, int]:
        metric, _, k = name.partition("@")
        return (1, 0, 0) if not k.isdigit() else (0, int(k), 0 if metric.endswith("recall") else 1)

    return sorted(names, key=order)


def version_view(info: VersionInfo, gate_metrics: Sequence[str] = ()) -> dict[str, Any]:
    """A version: aliases, lineage, registration metrics, and per dataset it was evaluated on, the gate's
    metrics (``gate_metrics``) as they stand."""
    evals = _evals(info)
    return {
        "version": info.version,
        "aliases": list(info.aliases),
        "created_ms": info.created_ms,
        "lineage": {k: info.tags[k] for k in LINEAGE if k in info.tags},
        "metrics": {k.removeprefix("metric."): v for k, v in sorted(info.tags.items()) if k.startswith("metric.")},
        "evals": {
            h: {
                "dataset": _dataset_name(info.tags[EVAL_TAG_PREFIX + h]),
                "gate": {m: ev.metrics[m] for m in gate_metrics if m in ev.metrics},
                "classes": len(ev.per_class),
            }
            for h, ev in evals.items()
        },
    }


def registry_view(
    store: RegistryStore, names: Sequence[str] | None = None, gate_metrics: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Every registered model (or those in ``names``): its versions, newest first, and its history."""
    out = []
    for name in names or store.model_names():
        versions = store.versions(name)
        events = [e.__dict__ for e in store.events(name)]
        out.append(
            {
                "name": name,
                "versions": [version_view(v, gate_metrics) for v in reversed(versions)],
                "history": list(reversed(events)),
            }
        )
    return out


def _resolve(store: RegistryStore, name: str, ref: str) -> VersionInfo:
    """A version by number or by alias (``production``, ``candidate``)."""
    return store.get(name, ref) if ref.isdigit() else store.by_alias(name, ref)


def class_table(store: RegistryStore, name: str, base: str, candidate: str, dataset: str | None) -> dict[str, Any]:
    """Per class, base against candidate, on ``dataset`` (an eval hash both carry; default: the newest
    evaluation they share): Recall@10, Precision@10, R-Precision and the differences."""
    a, b = _resolve(store, name, base), _resolve(store, name, candidate)
    if a.version == b.version:
        raise InvalidInput(f"{base} and {candidate} are the same version ({a.version}): pick two versions")
    ea, eb = _evals(a), _evals(b)
    shared = [h for h in ea if h in eb and ea[h].per_class and eb[h].per_class]
    if dataset is not None:
        if dataset not in shared:
            raise NotFound(f"versions {a.version} and {b.version} have no per-class evaluation on dataset {dataset!r}")
        shared = [dataset]
    if not shared:
        raise NotFound(
            f"versions {a.version} and {b.version} of {name!r} share no per-class evaluation: run "
            f"`vlmops eval {name} {b.version} --against {a.version} --dataset D --per-class`"
        )
    chosen = max(shared, key=lambda h: max(ea[h].at, eb[h].at))
    pa, pb = ea[chosen].per_class, eb[chosen].per_class
    metrics = _class_metrics(pa)
    rows = []
    for label in sorted(set(pa) & set(pb)):
        cells = {}
        for m in metrics:
            va, vb = pa[label].get(m), pb[label].get(m)
            cells[m] = {"base": va, "candidate": vb, "diff": None if va is None or vb is None else vb - va}
        rows.append({"class": label, "n_images": pa[label].get("n_images"), "metrics": cells})
    return {
        "model": name,
        "base": a.version,
        "candidate": b.version,
        "dataset": chosen,
        "datasets": shared,
        "metrics": metrics,
        "rows": rows,
        "overall": {
            m.removeprefix("class_"): {"base": ea[chosen].metrics.get(m), "candidate": eb[chosen].metrics.get(m)}
            for m in metrics
        },
    }
