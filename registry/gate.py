"""Evaluation of registered versions and the promotion gate.

``vlmops eval`` scores versions on one held-out set and stores each version's figures (averaged and per
class) as a model version tag ``eval.<dataset hash>``. ``promote`` moves ``production`` only when the
candidate is not worse than production on the gate metrics (minus a margin), on the same dataset, and,
when ``max_class_drop`` is set, loses no more than that on any class for the per-class metric: a
candidate better on average and worse on one class (ONiT's finetune lost on maps) is refused, and the
refusal names the classes. ``force`` overrides, and the verdict (or the override) is recorded in the
registry with the promotion event.
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
from registry.class_table import ClassComparison
from registry.datasets import PairDataset, load_pairs
from registry.evaluation import DEFAULT_CLASS_KS, DEFAULT_KS, EvalReport, evaluate, plot, table
from registry.families.clip import DEFAULT_TEMPLATES, ClipModel
from registry.store import PRODUCTION, RegistryEvent, RegistryStore, VersionInfo, mlflow_key
from registry.task_quality import TASK_OF_FAMILY

EVAL_TAG_PREFIX = "eval."
EVAL_EXPERIMENT = "vlmops-eval"
MAX_TAG_VALUE = 100_000  # MLflow's limit on a model version tag's value


class GateRefused(VlmopsError):
    """The candidate is worse than production on a gate metric, or cannot be compared."""

    http_status = 409


def eval_tag(dataset_hash: str) -> str:
    return f"{EVAL_TAG_PREFIX}{dataset_hash[:16]}"


@dataclass(frozen=True)
class StoredEval:
    """A version's figures on one dataset, as kept in its ``eval.<hash>`` tag."""

    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]]
    class_queries: tuple[str, ...]
    at: float

    @classmethod
    def parse(cls, raw: str) -> StoredEval:
        obj = json.loads(raw)
        return cls(dict(obj["metrics"]), dict(obj.get("per_class", {})), tuple(obj.get("class_queries", ())), obj["at"])


def stored_eval(info: VersionInfo, dataset_hash: str) -> StoredEval | None:
    raw = info.tags.get(eval_tag(dataset_hash))
    return None if raw is None else StoredEval.parse(raw)


def _tag_value(report: EvalReport, source: str) -> str:
    """The tag: the averaged figures, and per class the class-query figures (rounded) while they fit MLflow's
    limit on a tag value; a set with thousands of classes keeps R-Precision only, then nothing per class."""
    base = {"metrics": report.metrics, "at": time.time(), "dataset": source, "class_queries": report.class_queries}
    keep_all = [*report.class_metric_names(), "n_images", "zero_shot_acc"]
    for keep in (keep_all, ["class_r_precision", "n_images"], []):
        per_class = {
            label: {k: round(v, 6) for k, v in row.items() if k in keep} for label, row in report.per_class.items()
        }
        value = json.dumps(base | {"per_class": per_class if keep else {}})
        if len(value) <= MAX_TAG_VALUE:
            return value
    return json.dumps(base)


def evaluate_versions(
    store: RegistryStore,
    settings: Settings,
    versions: Sequence[VersionInfo],
    data: PairDataset,
    ks: Sequence[int] = DEFAULT_KS,
    class_ks: Sequence[int] = DEFAULT_CLASS_KS,
    class_queries: Sequence[str] = DEFAULT_TEMPLATES,
) -> dict[str, EvalReport]:
    """Score each version on ``data``; store the figures as version tags and log one MLflow run.

    The first version is the candidate, a second one its base: their per-class table is logged with the
    run, and to the candidate's own run."""
    device = resolve_device(settings.device)
    reports: dict[str, EvalReport] = {}
    for info in versions:
        model = store.load(info, device)
        if not isinstance(model, ClipModel):
            raise InvalidInput(f"{info.ref} is a {info.family} model; evaluation scores CLIP versions")
        report = evaluate(model, data, info.ref, ks, class_ks, class_queries)
        reports[f"v{info.version}"] = report
        value = _tag_value(report, data.source)
        store.client.set_model_version_tag(info.name, info.version, eval_tag(data.content_hash), value)
    _log_eval_run(store, versions, data, reports)
    return reports


def evaluate_task_versions(
    store: RegistryStore, settings: Settings, versions: Sequence[VersionInfo], source: str
) -> tuple[dict[str, EvalReport], str]:
    """Score captioning, VQA or grounding versions on a task dataset (see ``registry.task_eval``); the figures
    are stored as each version's ``eval.<hash>`` tag, as CLIP's are, for the gate. Returns them and the hash."""
    from registry.task_eval import load_examples, score_model

    examples, content_hash = load_examples(source)
    device = resolve_device(settings.device)
    reports: dict[str, EvalReport] = {}
    for info in versions:
        if info.family not in TASK_OF_FAMILY:
            kind = info.family or "unknown"
            raise InvalidInput(f"{info.ref} is a {kind} model, not a captioning, VQA or grounding one")
        figures = score_model(store.load(info, device), examples)  # type: ignore[arg-type]
        report = EvalReport(info.ref, source, content_hash, len(examples), 0, figures)
        reports[f"v{info.version}"] = report
        store.client.set_model_version_tag(info.name, info.version, eval_tag(content_hash), _tag_value(report, source))
    return reports, content_hash


def gate_metrics(settings: Settings, family: str) -> list[str]:
    """The metrics the gate compares for a model of ``family``: CLIP's, or its task's."""
    task = TASK_OF_FAMILY.get(family)
    return list(settings.gate.metrics if task is None else settings.gate.task_metrics[task])


def comparison(reports: dict[str, EvalReport], only: Sequence[str] | None = None) -> ClassComparison | None:
    """The per-class table of the candidate (first report) against its base (second), where both have classes."""
    if len(reports) != 2:
        return None
    (cand_name, cand), (base_name, base) = reports.items()
    return ClassComparison.of(base_name, base, cand_name, cand, only) if cand.per_class and base.per_class else None


def write_eval_files(reports: dict[str, EvalReport], folder: Path) -> list[Path]:
    """The reports (JSON), the averaged table, the bar chart and, for two versions with classes, the per-class
    table as text, CSV and PNG."""
    written = []
    for label, report in reports.items():
        written.append(folder / f"report-{label}.json")
        written[-1].write_text(report.to_json())
    written.append(folder / "table.txt")
    written[-1].write_text(table(reports) + "\n")
    written.append(plot(reports, folder / "metrics.png"))
    classes = comparison(reports)
    if classes is not None:
        written.append(folder / "per_class.txt")
        written[-1].write_text(classes.text() + "\n")
        written.append(classes.write_csv(folder / "per_class.csv"))
        written.append(classes.plot(folder / "per_class.png"))
    return written


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
        write_eval_files(reports, folder)
        client.log_artifacts(rid, str(folder), "eval")
        # the candidate's own run (the one its version was registered from) keeps them too
        cand = versions[0]
        cand_run = client.get_model_version(cand.name, cand.version).run_id
        if cand_run and cand_run != rid:
            client.log_artifacts(cand_run, str(folder), f"eval/{data.content_hash[:16]}")
            client.set_tag(cand_run, f"vlmops.eval_run.{data.content_hash[:16]}", rid)
            for key, value in reports[f"v{cand.version}"].metrics.items():
                client.log_metric(cand_run, f"eval.{mlflow_key(key)}", value)
    client.set_terminated(rid, "FINISHED")
    return rid


@dataclass(frozen=True)
class GateRow:
    metric: str
    candidate: float
    production: float
    passed: bool


@dataclass(frozen=True)
class ClassGateRow:
    label: str
    n_images: int
    candidate: float
    production: float

    @property
    def drop(self) -> float:
        return self.production - self.candidate


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    rows: tuple[GateRow, ...]
    margin: float
    dataset_hash: str
    candidate: str
    production: str
    class_metric: str | None = None
    max_class_drop: float | None = None
    class_failures: tuple[ClassGateRow, ...] = ()  # the classes that lose more than max_class_drop
    n_classes: int = 0

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
        if self.class_metric is not None:
            head = f"  per class: {self.class_metric} may drop at most {self.max_class_drop} on any of {self.n_classes}"
            if not self.class_failures:
                lines.append(f"{head}: ok")
            else:
                lines.append(f"{head}: {len(self.class_failures)} class(es) drop more — CLASS WORSE")
                for c in self.class_failures:
                    lines.append(
                        f"    {c.label:<24} n={c.n_images:<6} candidate {c.candidate:.4f}  "
                        f"production {c.production:.4f}  drop {c.drop:.4f}"
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


def check_classes(
    candidate: StoredEval, production: StoredEval, metric: str, max_drop: float
) -> tuple[tuple[ClassGateRow, ...], int]:
    """The classes on which the candidate loses more than ``max_drop`` on ``metric``, worst first; and how
    many classes were compared."""
    if candidate.class_queries != production.class_queries:
        raise InvalidInput(
            "the two versions were scored with different class queries "
            f"({list(candidate.class_queries)} against {list(production.class_queries)}): score both in one "
            "`vlmops eval` call"
        )
    shared = sorted(set(candidate.per_class) & set(production.per_class))
    rows = [lb for lb in shared if metric in candidate.per_class[lb] and metric in production.per_class[lb]]
    if not rows:
        raise InvalidInput(
            f"the per-class guard needs {metric!r} per class and the evaluation has none (a dataset with class "
            "labels, scored by this version of `vlmops eval`)"
        )
    failures = []
    for label in rows:
        c, p = candidate.per_class[label], production.per_class[label]
        row = ClassGateRow(label, int(c.get("n_images", 0)), c[metric], p[metric])
        if row.drop > max_drop + 1e-12:
            failures.append(row)
    return tuple(sorted(failures, key=lambda r: -r.drop)), len(rows)


def _common_eval(
    store: RegistryStore, settings: Settings, cand: VersionInfo, prod: VersionInfo, dataset: str | None
) -> tuple[StoredEval, StoredEval, str]:
    """Both versions' figures on one dataset: the one named (scored now where not stored), or the
    latest dataset both were scored on by ``vlmops eval``."""
    if dataset and cand.family in TASK_OF_FAMILY:
        _, content_hash = evaluate_task_versions(store, settings, [cand, prod], dataset)
        cand, prod = store.get(cand.name, cand.version), store.get(prod.name, prod.version)
        c, p = stored_eval(cand, content_hash), stored_eval(prod, content_hash)
        assert c is not None and p is not None
        return c, p, content_hash
    if dataset:
        data = load_pairs(dataset, require_captions=False, lazy=True)
        missing = [v for v in (cand, prod) if stored_eval(v, data.content_hash) is None]
        if missing:
            evaluate_versions(store, settings, missing, data)
        cand, prod = store.get(cand.name, cand.version), store.get(prod.name, prod.version)
        c, p = stored_eval(cand, data.content_hash), stored_eval(prod, data.content_hash)
        if c is None or p is None:
            raise InvalidInput(f"the figures of {cand.ref} and {prod.ref} on {dataset} were not stored")
        return c, p, data.content_hash
    common = []
    for key in set(cand.tags) & set(prod.tags):
        if key.startswith(EVAL_TAG_PREFIX):
            at = min(StoredEval.parse(cand.tags[key]).at, StoredEval.parse(prod.tags[key]).at)
            common.append((at, key))
    if not common:
        raise InvalidInput(
            f"{cand.ref} and production {prod.ref} were never scored on the same dataset: run "
            f"`vlmops eval {cand.name} {cand.version} --dataset PAIRS` or pass --dataset"
        )
    key = max(common)[1]
    return StoredEval.parse(cand.tags[key]), StoredEval.parse(prod.tags[key]), key[len(EVAL_TAG_PREFIX) :]


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
        passed, rows = check(c.metrics, p.metrics, gate_metrics(settings, cand.family), gate.margin)
        failures: tuple[ClassGateRow, ...] = ()
        n_classes = 0
        if gate.max_class_drop is not None:
            failures, n_classes = check_classes(c, p, gate.class_metric, gate.max_class_drop)
        verdict = GateVerdict(
            passed and not failures,
            rows,
            gate.margin,
            dataset_hash,
            cand.ref,
            prod.ref,
            gate.class_metric if gate.max_class_drop is not None else None,
            gate.max_class_drop,
            failures,
            n_classes,
        )
        record = verdict.to_dict()
    except InvalidInput as exc:
        if not force:
            raise GateRefused(f"cannot apply the promotion gate: {exc} (or pass --force)") from exc
        record = {"passed": False, "error": str(exc)}
    if verdict is not None and not verdict.passed and not force:
        raise GateRefused(verdict.text() + "\n(--force overrides; the override is recorded)")
    event = store.promote(name, version, reason=reason, forced=force, gate=record)
    return event, verdict
