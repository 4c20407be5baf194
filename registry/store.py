"""The MLflow model registry: register versions with lineage tags, resolve aliases, promote, roll back.

Aliases ``candidate`` and ``production`` (MLflow stages are deprecated and not used). Every
promotion and rollback is appended to the registered model's tags as an event (when, from which
version, to which, why), so the production history is kept in the registry itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from infra.errors import InvalidInput, Misconfigured, NotFound
from infra.lazy import lazy_module
from infra.locks import file_lock
from infra.settings import Settings
from registry.families import ModelFamily, load_model

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.exceptions import MlflowException

mlflow = lazy_module("mlflow")  # loaded by the first store (a service's supervisor process never makes one)

log = logging.getLogger(__name__)

PRODUCTION = "production"
CANDIDATE = "candidate"
EXPERIMENT = "vlmops-registry"
EVENT_PREFIX = "vlmops.event."
MODEL_ARTIFACT = "model"


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    source: str
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    created_ms: int = 0

    @property
    def family(self) -> str:
        return self.tags.get("family", "")

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"


@dataclass(frozen=True)
class RegistryEvent:
    action: str  # promote | rollback
    version: str
    previous: str | None
    reason: str
    at: float
    forced: bool = False
    gate: dict[str, Any] | None = None  # the gate's verdict and figures, when one was applied

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


def mlflow_key(metric: str) -> str:
    """MLflow metric and tag names cannot hold '@' (``t2i_recall@5`` -> ``t2i_recall_at_5``)."""
    return metric.replace("@", "_at_")


def _info(mv: ModelVersion) -> VersionInfo:
    return VersionInfo(
        name=mv.name,
        version=str(mv.version),
        source=mv.source,
        tags=dict(mv.tags or {}),
        aliases=tuple(mv.aliases or ()),
        created_ms=int(mv.creation_timestamp or 0),
    )


def _is_not_found(exc: MlflowException) -> bool:
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (``sqlite:////abs/path`` is absolute), else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def is_local_location(location: str) -> bool:
    """A ``file:`` URI or a plain path: readable only on the machine (or volume) that wrote it."""
    return urlparse(location).scheme in ("", "file")


class RegistryStore:
    """Model versions in MLflow, and a local cache of their downloaded files.

    ``artifact_location`` is given to the experiments this store creates (``None``: the tracking
    server's default, its artifact proxy). With ``shared`` (a tracking server or an explicit artifact
    root) every experiment must keep its files where other machines can read them: one created by an
    earlier release under a ``file://`` root is refused with the fix, before anything is logged to it."""

    def __init__(self, tracking_uri: str, artifact_location: str | None, cache_dir: Path, shared: bool = False) -> None:
        db = _sqlite_path(tracking_uri)
        # the embedded registry: the first client of a new database creates its tables (MLflow's migrations);
        # processes started side by side on one new home (``vlmops up``) raced to create them and all but one
        # failed ("table _alembic_tmp_latest_metrics already exists"). Their clients open it one at a time.
        if db is None:
            self.client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        else:
            with file_lock(db.with_name(db.name + ".lock")):
                self.client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
                self.client.search_registered_models(max_results=1)  # the registry's store: opened now, too
        self.tracking_uri = tracking_uri
        self.artifact_location = artifact_location
        self.shared = shared
        self.cache_dir = cache_dir
        self._download_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> RegistryStore:
        settings.ensure_home()
        shared = settings.remote_tracking or settings.artifact_root is not None
        return cls(settings.tracking_uri, settings.artifact_location, settings.model_cache_dir, shared)

    # ------------------------------------------------------------------ write
    def experiment_id(self, name: str = EXPERIMENT) -> str:
        """The id of experiment ``name``, created (with the registry's artifact location) when missing."""
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            with contextlib.suppress(mlflow.exceptions.MlflowException):  # or created by a concurrent caller
                self.client.create_experiment(name, artifact_location=self.artifact_location)
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise NotFound(f"experiment {name!r} could not be created on {self.tracking_uri}")
        self._check_location(name, str(exp.experiment_id), str(exp.artifact_location))
        return str(exp.experiment_id)

    def _check_location(self, name: str, experiment_id: str, location: str) -> None:
        if not self.shared:
            return
        if self.artifact_location is not None:
            if location.startswith(self.artifact_location.rstrip("/")):
                return
            wanted = f"under VLMOPS_ARTIFACT_ROOT={self.artifact_location}"
        elif not is_local_location(location):
            return
        else:
            wanted = "on the tracking server's artifact store (mlflow server --serve-artifacts)"
        raise Misconfigured(
            f"MLflow experiment {name!r} (id {experiment_id}) keeps its artifacts at {location}, not {wanted}: "
            "model versions logged there cannot be read from other machines. It was created by an earlier "
            "release or another setting. Rename it and vlmops creates it anew where every process can read it: "
            f"MLFLOW_TRACKING_URI={self.tracking_uri} mlflow experiments rename --experiment-id {experiment_id} "
            f"--new-name {name}-local (versions registered before keep working where their files are)."
        )

    def register(
        self,
        name: str,
        model: ModelFamily,
        tags: dict[str, str] | None = None,
        metrics: dict[str, float] | None = None,
        description: str = "",
        set_candidate: bool = True,
        run_id: str | None = None,
    ) -> VersionInfo:
        """Log ``model`` as run artifacts and register it as a new version of ``name``."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / MODEL_ARTIFACT
            model.save(path)
            return self.register_dir(name, path, tags, metrics, description, set_candidate, run_id)

    def register_dir(
        self,
        name: str,
        path: Path,
        tags: dict[str, str] | None = None,
        metrics: dict[str, float] | None = None,
        description: str = "",
        set_candidate: bool = True,
        run_id: str | None = None,
    ) -> VersionInfo:
        """Register a directory written by a family's ``save`` as a new version of ``name``.

        With ``run_id`` (a training run) the files are logged into that run, which then is the
        version's run in MLflow; otherwise a registration run is created for them."""
        from registry.families import read_manifest

        manifest = read_manifest(path)
        all_tags = {k: str(v) for k, v in manifest.items()} | {k: str(v) for k, v in (tags or {}).items()}
        all_tags |= {f"metric.{mlflow_key(k)}": f"{v:.6g}" for k, v in (metrics or {}).items()}
        if run_id is not None:
            self.client.log_artifacts(run_id, str(path), MODEL_ARTIFACT)
            run = self.client.get_run(run_id)
        else:
            run = self.client.create_run(self.experiment_id(), run_name=f"register-{name}", tags={"vlmops.model": name})
            try:
                for key, value in all_tags.items():
                    self.client.log_param(run.info.run_id, key[:250], value[:6000])
                for key, value in (metrics or {}).items():
                    self.client.log_metric(run.info.run_id, mlflow_key(key), float(value))
                self.client.log_artifacts(run.info.run_id, str(path), MODEL_ARTIFACT)
            except Exception:
                self.client.set_terminated(run.info.run_id, "FAILED")
                raise
            self.client.set_terminated(run.info.run_id, "FINISHED")
        try:
            self.client.create_registered_model(name)
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{run.info.artifact_uri}/{MODEL_ARTIFACT}"
        mv = self.client.create_model_version(
            name, source=source, run_id=run.info.run_id, tags=all_tags, description=description
        )
        if set_candidate:
            self.client.set_registered_model_alias(name, CANDIDATE, mv.version)
        log.info("registered %s version %s", name, mv.version)
        return self.get(name, str(mv.version))

    # ------------------------------------------------------------------ read
    def get(self, name: str, version: str) -> VersionInfo:
        if not str(version).isdigit():
            raise NotFound(f"model version must be a positive integer, got {version!r}")
        try:
            return _info(self.client.get_model_version(name, str(version)))
        except mlflow.exceptions.MlflowException as exc:
            if _is_not_found(exc):
                raise NotFound(f"model {name!r} has no version {version!r}") from exc
            raise

    def by_alias(self, name: str, alias: str) -> VersionInfo:
        try:
            return _info(self.client.get_model_version_by_alias(name, alias))
        except mlflow.exceptions.MlflowException as exc:
            if _is_not_found(exc):
                raise NotFound(f"model {name!r} has no version with alias {alias!r}") from exc
            raise

    def resolve(self, ref: str) -> VersionInfo:
        """``name@alias``, ``name/version`` or ``name`` (= ``name@production``)."""
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return self.by_alias(name, alias)
        if "/" in ref:
            name, version = ref.rsplit("/", 1)
            return self.get(name, version)
        return self.by_alias(ref, PRODUCTION)

    def versions(self, name: str | None = None) -> list[VersionInfo]:
        """Registered versions with their aliases (search results carry no aliases: they are joined here)."""
        found = self.client.search_model_versions(f"name = '{name}'") if name else self.client.search_model_versions()
        aliases: dict[tuple[str, str], list[str]] = {}
        for model_name in {mv.name for mv in found}:
            for alias, version in (self.client.get_registered_model(model_name).aliases or {}).items():
                aliases.setdefault((model_name, str(version)), []).append(alias)
        infos = [replace(_info(mv), aliases=tuple(sorted(aliases.get((mv.name, str(mv.version)), [])))) for mv in found]
        return sorted(infos, key=lambda v: (v.name, int(v.version)))

    def model_names(self) -> list[str]:
        return sorted(rm.name for rm in self.client.search_registered_models())

    # ------------------------------------------------------------------ aliases
    def events(self, name: str) -> list[RegistryEvent]:
        try:
            rm = self.client.get_registered_model(name)
        except mlflow.exceptions.MlflowException as exc:
            if _is_not_found(exc):
                raise NotFound(f"no registered model {name!r}") from exc
            raise
        items = sorted((k, v) for k, v in (rm.tags or {}).items() if k.startswith(EVENT_PREFIX))
        return [RegistryEvent(**json.loads(v)) for _, v in items]

    def _record(self, name: str, event: RegistryEvent) -> None:
        key = f"{EVENT_PREFIX}{int(event.at * 1e6):020d}.{uuid.uuid4().hex[:6]}"
        self.client.set_registered_model_tag(name, key, event.to_json())

    def _production_version(self, name: str) -> str | None:
        try:
            return self.by_alias(name, PRODUCTION).version
        except NotFound:
            return None

    def promote(
        self, name: str, version: str, reason: str = "", forced: bool = False, gate: dict[str, Any] | None = None
    ) -> RegistryEvent:
        """Point ``production`` at ``version`` and record the event (see ``registry.gate`` for the gated path)."""
        target = self.get(name, version)
        previous = self._production_version(name)
        if previous == target.version:
            raise InvalidInput(f"{name} version {version} is already in production")
        self.client.set_registered_model_alias(name, PRODUCTION, target.version)
        if CANDIDATE in target.aliases:
            self.client.delete_registered_model_alias(name, CANDIDATE)
        event = RegistryEvent("promote", target.version, previous, reason, time.time(), forced, gate)
        self._record(name, event)
        self.client.set_model_version_tag(name, target.version, "promoted_at", f"{event.at:.3f}")
        return event

    def production_stack(self, name: str) -> list[str]:
        """Versions that were production, oldest first; the last is production now."""
        stack: list[str] = []
        for event in self.events(name):
            if event.action == "promote":
                stack.append(event.version)
            elif event.action == "rollback" and stack:
                stack.pop()
        return stack

    def rollback(self, name: str, reason: str = "") -> RegistryEvent:
        """Move ``production`` back to the version it pointed at before the last promotion."""
        stack = self.production_stack(name)
        if len(stack) < 2:
            raise InvalidInput(f"{name} has no earlier production version to roll back to")
        current, previous = stack[-1], stack[-2]
        self.client.set_registered_model_alias(name, PRODUCTION, previous)
        event = RegistryEvent("rollback", previous, current, reason, time.time())
        self._record(name, event)
        return event

    # ------------------------------------------------------------------ files
    def download(self, info: VersionInfo) -> Path:
        """The version's files in the local cache (downloaded once, atomically)."""
        target = self.cache_dir / info.name / info.version
        if target.is_dir():
            return target
        with self._download_lock:
            if target.is_dir():
                return target
            target.parent.mkdir(parents=True, exist_ok=True)
            source = info.source
            if is_local_location(source) and not Path(urlparse(source).path).exists():
                raise Misconfigured(
                    f"{info.ref} was logged to {source}, a folder this machine does not have: it was registered "
                    "with local artifacts on another machine. Register it again with VLMOPS_ARTIFACT_ROOT set or "
                    "against a tracking server that serves artifacts (mlflow server --serve-artifacts)."
                )
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{info.version}-"))
            try:
                got = Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=info.source,
                        dst_path=str(tmp),
                        tracking_uri=self.tracking_uri,
                        registry_uri=self.tracking_uri,
                    )
                )
                got.rename(target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return target

    def load(self, info: VersionInfo, device: str = "cpu") -> ModelFamily:
        return load_model(self.download(info), device)

    def describe(self, info: VersionInfo) -> dict[str, Any]:
        return {"name": info.name, "version": info.version, "aliases": list(info.aliases), **info.tags}
