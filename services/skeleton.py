"""What every model service shares: the registry, a pool of loaded versions (production + pinned),
readiness, the request-time hooks items call while they validate, and the split of a batch by version.

A service class sets itself up with :meth:`ModelService.setup` in its ``__init__`` and declares its
batchable BentoML APIs; everything else is here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, TypeVar

import bentoml
import torch
from bentoml.validators import ContentType
from PIL import Image
from pydantic import BaseModel, Field

from infra.errors import ModelFormatError
from infra.settings import ServiceSettings, Settings, resolve_device, resolve_precision
from registry.families import ModelFamily
from registry.store import RegistryStore, VersionInfo
from services.edge import http_errors
from services.items import Prepared, RequestHooks
from services.model_pool import Loaded, ModelPool

M = TypeVar("M", bound=ModelFamily)
T = TypeVar("T")


def running_service() -> RequestHooks | None:
    """This server process's service instance (BentoML's own accessor); None outside a server."""
    try:
        service = bentoml.get_current_service()
    except bentoml.exceptions.BentoMLException:
        return None
    return service if isinstance(getattr(service, "pool", None), ModelPool) else None


def by_version(items: Sequence[Any]) -> dict[str | None, list[int]]:
    groups: dict[str | None, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        groups[item.model_version].append(i)
    return groups


def service_options(name: str, limits: ServiceSettings, timeout_s: int = 120) -> dict[str, Any]:
    """``@bentoml.service`` options: worker processes (one model copy each) and access log from settings."""
    logging = {"access": {"enabled": limits.access_log}}
    return {"name": name, "traffic": {"timeout": timeout_s}, "workers": limits.workers, "logging": logging}


def batch_options(limits: ServiceSettings) -> dict[str, Any]:
    """``@bentoml.api`` options of a batchable API: adaptive batching bounded by settings."""
    return {"batchable": True, "max_batch_size": limits.max_batch_size, "max_latency_ms": limits.max_latency_ms}


def items_of(item: type[BaseModel], limits: ServiceSettings) -> Any:
    """The one batchable parameter: a non-empty list of items, at most ``max_items``."""
    return Annotated[list[item], Field(min_length=1, max_length=limits.max_items)]  # type: ignore[valid-type]


def json_list(out: type[BaseModel]) -> Any:
    """A list of ``out`` with its content type declared: spares BentoML a JSON-schema build per response."""
    return Annotated[list[out], ContentType("application/json")]  # type: ignore[valid-type]


class ModelService(Generic[M]):
    settings: Settings
    limits: ServiceSettings
    pool: ModelPool[M]

    def setup(self, settings: Settings, limits: ServiceSettings, family: type[M] | tuple[type[M], ...]) -> None:
        self.settings = settings
        self.limits = limits
        self.family = family
        self.device = resolve_device(settings.device)
        self.precision = resolve_precision(limits.precision, self.device)
        if limits.torch_threads:
            torch.set_num_threads(limits.torch_threads)
        self.store = RegistryStore.from_settings(settings)
        self.pool = ModelPool(
            self.store,
            limits.model_name,
            self._load,
            cache_size=limits.version_cache_size,
            refresh_interval_s=limits.refresh_interval_s,
        )
        self.pool.start()

    def _load(self, info: VersionInfo) -> M:
        model = self.store.load(info, self.device)
        if not isinstance(model, self.family):
            raise ModelFormatError(f"{info.ref} is a {info.family!r} model, which this service cannot serve")
        model.configure_runtime(self.precision)  # type: ignore[attr-defined]
        return model

    def __is_ready__(self) -> bool:
        return self.pool.ready

    # request-time hooks (RequestHooks)
    def check_version(self, version: str) -> None:
        self.pool.check_version(version)

    def preprocess(self, version: str | None, image: Image.Image) -> Prepared | None:
        return None

    def per_version(self, items: Sequence[Any], run: Callable[[Loaded[M], list[Any]], list[T]]) -> list[T]:
        """Run ``run`` once per model version among ``items``; results in the items' order."""
        out: list[T | None] = [None] * len(items)
        with http_errors():
            for version, idx in by_version(items).items():
                loaded = self.pool.get(version)
                for i, result in zip(idx, run(loaded, [items[i] for i in idx]), strict=True):
                    out[i] = result
        return [o for o in out if o is not None]

    def describe_models(self) -> dict[str, Any]:
        with http_errors():
            prod = self.pool.production
        return {
            "model": self.pool.name,
            "production": prod.version,
            "loaded": self.pool.loaded_versions(),
            "device": self.device,
            "info": prod.model.describe(),
        }
