"""Evaluation of registered versions and the promotion gate.

``vlmops eval`` scores versions on one held-out set and stores each version's figures as a model
version tag ``eval.<dataset hash>``. ``promote`` moves ``production`` only when the candidate is not
worse than production on the gate metrics (minus a margin), on the same dataset; ``force`` overrides,
and the verdict (or the override) is recorded in the registry with the promotion event.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from infra.errors import InvalidInput, NotFound, VlmopsError
from infra.settings import Settings, resolve_device
from registry.datasets import PairDataset, load_pairs
from registry.evaluation import EvalReport, evaluate, plot, table
from registry.families.clip import ClipModel
from registry.store import PRODUCTION, RegistryEvent, RegistryStore, VersionInfo, mlflow_key

EVAL_TAG_PREFIX = "eval."
EVAL_EXPERIMENT = "vlmops-eval"


class GateRefused(VlmopsError):
    """The candidate is worse than production on a gate metric, or cannot be compared."""

    http_status = 409


def eval_tag(dataset_hash: str) -> str:
    return f"{EVAL_TAG_PREFIX}{dataset_hash[:16]}"


def stored_eval(info: VersionInfo, dataset_hash: str) -> dict[str, float] | None:
    raw = info.tags.get(eval_tag(dataset_hash))
    return None if raw is None else dict(json.loads(raw)["metrics"])


def evaluate_versions(
    store: RegistryStore, settings: Settings, versions: Sequence[VersionInfo], data: PairDataset
) -> dict[str, EvalReport]:
    """Score each version on ``data``; store the figures as version tags and log one MLflow run."""
    device = resolve_device(settings.device)
    reports: dict[str, EvalReport] = {}
    for info in versions:
        model = store.load(info, device)
        if not isinstance(model, ClipModel):
            raise InvalidInput(f"{info.ref} is a {info.family} model; evaluation scores CLIP versions")
        report = evaluate(model, data, info.ref)
        reports[f"v{info.version}"] = report
        value = json.dumps({"metrics": report.metrics, "at": time.time(), "dataset": data.source})
        store.client.set_model_version_tag(info.name, info.version, eval_tag(data.content_hash), value)
    _log_eval_run(store, versions, data, reports)
    return reports


def _log_eval_run(
    store: RegistryStore, versions: Sequence[VersionInfo], data: PairDataset, reports: dict[str, EvalReport]
) -> str:
    client = store.client
    names = sorted({v.name for v in versions})
    run = client.create_run(
        store.experiment_id(EVAL_EXPERIMENT),
        run_name=f"eval-{'+'.join(v.ref for v in versions)}",
        tags={"vlmops.model": ",".join(names), "dataset_hash": data.content_hash},
    )
    rid = run.info.run_id
    client.log_param(rid, "dataset", data.source[:6000])
    client.log_param(rid, "dataset_hash", data.content_hash)
    client.log_param(rid, "versions", ",".join(v.ref for v in versions))
    for label, report in reports.items():
        for key, value in report.metrics.items():
            client.log_metric(rid, f"{label}.{mlflow_key(key)}", value)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for label, report in reports.items():
            (folder / f"report-{label}.json").write_text(report.to_json())
        (folder / "table.txt").write_text(table(reports) + "\n")
        plot(reports, folder / "metrics.png")
        client.log_artifacts(rid, str(folder), "eval")
    client.set_terminated(rid, "FINISHED")
    return rid


@dataclass(frozen=True)
class GateRow:
    metric: str
    candidate: float
    production: float
    passed: bool


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    rows: tuple[GateRow, ...]
    margin: float
    dataset_hash: str
    candidate: str
    production: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        lines = [
            f"gate on dataset {self.dataset_hash[:16]} (margin {self.margin}): "
            f"{'PASSED' if self.passed else 'REFUSED'} — candidate {self.candidate} "
            f"against production {self.production}"
        ]
        for r in self.rows:
            lines.append(
                f"  {r.metric:<22} candidate {r.candidate:.4f}  production {r.production:.4f}  "
                f"{'ok' if r.passed else 'WORSE'}"
            )
        return "\n".join(lines)


def check(
    candidate: dict[str, float], production: dict[str, float], metrics: Sequence[str], margin: float
) -> tuple[bool, tuple[GateRow, ...]]:
    rows = []
    for metric in metrics:
        if metric not in candidate or metric not in production:
            known = ", ".join(sorted(set(candidate) & set(production)))
            raise InvalidInput(f"gate metric {metric!r} is not in the evaluation (known: {known})")
        ok = candidate[metric] >= production[metric] - margin
        rows.append(GateRow(metric, candidate[metric], production[metric], ok))
    return all(r.passed for r in rows), tuple(rows)


def _common_eval(
    store: RegistryStore, settings: Settings, cand: VersionInfo, prod: VersionInfo, dataset: str | None
) -> tuple[dict[str, float], dict[str, float], str]:
    """Both versions' figures on one dataset: the one named (scored now where not stored), or the
    latest dataset both were scored on by ``vlmops eval``."""
    if dataset:
        data = load_pairs(dataset)
        missing = [v for v in (cand, prod) if stored_eval(v, data.content_hash) is None]
        if missing:
            evaluate_versions(store, settings, missing, data)
        cand, prod = store.get(cand.name, cand.version), store.get(prod.name, prod.version)
        c, p = stored_eval(cand, data.content_hash), stored_eval(prod, data.content_hash)
        assert c is not None and p is not None
        return c, p, data.content_hash
    common = []
    for key in set(cand.tags) & set(prod.tags):
        if key.startswith(EVAL_TAG_PREFIX):
            at = min(json.loads(cand.tags[key])["at"], json.loads(prod.tags[key])["at"])
            common.append((at, key))
    if not common:
        raise InvalidInput(
            f"{cand.ref} and production {prod.ref} were never scored on the same dataset: run "
            f"`vlmops eval {cand.name} {cand.version} --dataset PAIRS` or pass --dataset"
        )
    key = max(common)[1]
    return (
        dict(json.loads(cand.tags[key])["metrics"]),
        dict(json.loads(prod.tags[key])["metrics"]),
        key[len(EVAL_TAG_PREFIX) :],
    )


def gated_promote(
    store: RegistryStore,
    settings: Settings,
    name: str,
    version: str,
    reason: str = "",
    force: bool = False,
    dataset: str | None = None,
) -> tuple[RegistryEvent, GateVerdict | None]:
    """Promote ``version`` to production if the gate passes (or ``force``); the verdict is recorded."""
    cand = store.get(name, version)
    try:
        prod = store.by_alias(name, PRODUCTION)
    except NotFound:
        return store.promote(name, version, reason or "first production version: nothing to gate against"), None
    if prod.version == cand.version:
        raise InvalidInput(f"{name} version {version} is already in production")
    gate = settings.gate
    verdict: GateVerdict | None = None
    record: dict[str, Any]
    try:
        c, p, dataset_hash = _common_eval(store, settings, cand, prod, dataset or gate.dataset)
        passed, rows = check(c, p, gate.metrics, gate.margin)
        verdict = GateVerdict(passed, rows, gate.margin, dataset_hash, cand.ref, prod.ref)
        record = verdict.to_dict()
    except InvalidInput as exc:
        if not force:
            raise GateRefused(f"cannot apply the promotion gate: {exc} (or pass --force)") from exc
        record = {"passed": False, "error": str(exc)}
    if verdict is not None and not verdict.passed and not force:
        raise GateRefused(verdict.text() + "\n(--force overrides; the override is recorded)")
    event = store.promote(name, version, reason=reason, forced=force, gate=record)
    return event, verdict
