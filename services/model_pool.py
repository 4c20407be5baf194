"""Versions a model service holds: ``production`` (always loaded, re-resolved on an interval) and an
LRU of versions that requests pinned.

A promotion or rollback is picked up by the refresher thread: the new version is loaded fully
before it replaces the old one, so no request fails in between; the old production version moves
into the LRU, where requests that still pin it find it.

``vlmops_model_loaded{model,version,stage}`` is 1 for each version the pool holds (``stage``:
``production``, or ``pinned`` for the LRU) and 0 once it has left that stage or been evicted; with
several worker processes a version counts as loaded while any live one holds it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import bentoml

from infra.errors import NotFound, NotReady
from infra.metrics import SeriesSet
from infra.threads import in_fresh_thread
from registry.families import ModelFamily
from registry.store import PRODUCTION, RegistryStore, VersionInfo

log = logging.getLogger(__name__)

M = TypeVar("M", bound=ModelFamily)
PINNED = "pinned"
LOADED = bentoml.metrics.Gauge(
    name="vlmops_model_loaded",
    documentation="1 for each model version this service holds in memory, by stage (production, pinned); "
    "0 once it is replaced or evicted",
    labelnames=["model", "version", "stage"],
    multiprocess_mode="livemax",
)


@dataclass(frozen=True)
class Loaded(Generic[M]):
    info: VersionInfo
    model: M

    @property
    def version(self) -> str:
        return self.info.version


class ModelPool(Generic[M]):
    def __init__(
        self,
        store: RegistryStore,
        name: str,
        loader: Callable[[VersionInfo], M],
        cache_size: int = 3,
        refresh_interval_s: float = 10.0,
    ) -> None:
        self.store = store
        self.name = name
        self._loader = loader
        self._cache_size = cache_size
        self._interval = refresh_interval_s
        self._production: Loaded[M] | None = None
        self._pinned: OrderedDict[str, Loaded[M]] = OrderedDict()
        self._known: set[str] = set()
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.on_load: Callable[[Loaded[M]], None] | None = None
        self._loaded = SeriesSet(LOADED)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Resolve and load production in the background, then keep re-resolving it."""
        self._thread = threading.Thread(target=self._run, name=f"model-pool-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
                self.last_error = None
            except Exception as exc:  # keep serving the loaded version; report through readiness/logs
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("could not refresh %s@%s: %s", self.name, PRODUCTION, self.last_error)
            self._stop.wait(self._interval if self._production is not None else min(self._interval, 1.0))

    @property
    def ready(self) -> bool:
        return self._production is not None

    # ------------------------------------------------------------------ versions
    def refresh(self) -> bool:
        """Re-resolve ``production``; load and swap in a new version. True when it changed."""
        info = self.store.by_alias(self.name, PRODUCTION)
        current = self._production
        if current is not None and current.version == info.version:
            return False
        loaded = self._load(info)
        with self._lock:
            old = self._production
            self._production = loaded
            self._pinned.pop(info.version, None)
            if old is not None:
                self._remember(old)
            self._publish()
        log.info("%s production is now version %s (was %s)", self.name, info.version, old and old.version)
        return True

    @property
    def production(self) -> Loaded[M]:
        prod = self._production
        if prod is None:
            raise NotReady(f"no {PRODUCTION} version of {self.name!r} is loaded yet")
        return prod

    def check_version(self, version: str) -> None:
        """Raise :class:`NotFound` unless the registry holds ``version`` of this model."""
        if version in self._known:
            return
        self.store.get(self.name, version)
        self._known.add(version)

    def peek(self, version: str | None = None) -> Loaded[M] | None:
        """The loaded ``version`` (None: production) if it is in memory now; never loads."""
        prod = self._production
        if version is None or (prod is not None and version == prod.version):
            return prod
        with self._lock:
            return self._pinned.get(version)

    def get(self, version: str | None = None) -> Loaded[M]:
        prod = self.production
        if version is None or version == prod.version:
            return prod
        with self._lock:
            hit = self._pinned.get(version)
            if hit is not None:
                self._pinned.move_to_end(version)
                return hit
            load_lock = self._load_locks.setdefault(version, threading.Lock())
        with load_lock:  # one load per version, however many requests ask at once
            with self._lock:
                if version in self._pinned:
                    return self._pinned[version]
            info = self.store.get(self.name, version)
            loaded = self._load(info)
            with self._lock:
                self._remember(loaded)
                self._publish()
            return loaded

    def loaded_versions(self) -> list[str]:
        with self._lock:
            versions = list(self._pinned)
        prod = self._production
        return ([prod.version] if prod else []) + versions

    def _remember(self, loaded: Loaded[M]) -> None:
        self._pinned[loaded.version] = loaded
        self._pinned.move_to_end(loaded.version)
        while len(self._pinned) > self._cache_size:
            evicted, _ = self._pinned.popitem(last=False)
            log.info("evicted %s version %s from the cache", self.name, evicted)

    def _publish(self) -> None:
        """The loaded-versions gauge, from the pool as it is now (under ``_lock``)."""
        held = {(self.name, version, PINNED): 1.0 for version in self._pinned}
        if self._production is not None:
            held[(self.name, self._production.version, PRODUCTION)] = 1.0
        self._loaded.publish(held)

    def _load(self, info: VersionInfo) -> Loaded[M]:
        if info.version not in self._known:
            self._known.add(info.version)
        # on a thread of its own: this thread (a poller, the model thread) keeps no OpenMP team from
        # the load, which would slow every later batch (see infra.threads)
        return in_fresh_thread(lambda: self._load_now(info), name=f"load-{self.name}")

    def _load_now(self, info: VersionInfo) -> Loaded[M]:
        loaded = Loaded(info, self._loader(info))
        if self.on_load is not None:
            self.on_load(loaded)
        return loaded


__all__ = ["Loaded", "ModelPool", "NotFound"]
