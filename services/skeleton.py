"""What every model service shares: the registry, a pool of loaded versions (production + pinned),
readiness, the request-time hooks items call while they validate, and the batcher every API goes
through (split by model version).

A service class sets itself up with :meth:`ModelService.setup` in its ``__init__`` and declares async
BentoML APIs that hand their items to :meth:`ModelService.respond` with the method that runs a batch
on a loaded model; everything else is here.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, TypeVar

import bentoml
from bentoml.validators import ContentType
from PIL import Image
from pydantic import BaseModel, Field
from starlette.responses import Response

from infra.errors import ModelFormatError
from infra.settings import ServiceSettings, Settings, resolve_device, resolve_precision
from infra.threads import one_torch_thread
from registry.families import ModelFamily
from registry.store import RegistryStore, VersionInfo
from services.batcher import Batcher, BatchStats
from services.edge import http_errors
from services.items import Prepared, RequestHooks
from services.model_pool import Loaded, ModelPool

M = TypeVar("M", bound=ModelFamily)
T = TypeVar("T")
RunOn = Callable[["Loaded[M]", list[Any]], list[T]]

BATCH_SIZE = bentoml.metrics.Histogram(
    name="vlmops_batch_size",
    documentation="items per batch the model ran, by service and operation",
    labelnames=["service", "operation"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
QUEUE_SECONDS = bentoml.metrics.Histogram(
    name="vlmops_queue_seconds",
    documentation="time the oldest request of a batch waited for the model, by service and operation",
    labelnames=["service", "operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
MODEL_SECONDS = bentoml.metrics.Histogram(
    name="vlmops_model_seconds",
    documentation="time the model thread spent on a batch (with loading a pinned version not yet in memory), "
    "by service and operation",
    labelnames=["service", "operation"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)

MODEL_BUSY = bentoml.metrics.Gauge(
    name="vlmops_model_busy",
    documentation="1 while the model thread runs a batch of the operation (summed over the API workers)",
    labelnames=["service", "operation"],
    multiprocess_mode="livesum",
)


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


def items_of(item: type[BaseModel], limits: ServiceSettings) -> Any:
    """The one parameter every API takes: a non-empty list of items, at most ``max_items``."""
    return Annotated[list[item], Field(min_length=1, max_length=limits.max_items)]  # type: ignore[valid-type]


def json_response(results: Sequence[BaseModel | bytes]) -> Any:
    """A JSON list response BentoML passes through as it is: each result serialised once, by
    pydantic-core or already as JSON bytes (BentoML would validate the list again and encode it with
    the stdlib's json, a quarter of the event loop's time under load). Typed ``Any``: the API's
    annotation still declares the schema (OpenAPI)."""
    body = b"[" + b",".join(r if isinstance(r, bytes) else r.__pydantic_serializer__.to_json(r) for r in results) + b"]"
    return Response(body, media_type="application/json")


def json_list(out: type[BaseModel]) -> Any:
    """An API's declared response: a JSON list of ``out`` (its OpenAPI schema); the bytes themselves
    are made by :func:`json_response`."""
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
            import torch  # in the worker only: the supervisor imports this module and never runs a model

            torch.set_num_threads(limits.torch_threads)
        # this thread runs the event loop, which decodes and preprocesses images at request time: with
        # torch ops of its own in parallel it would keep an OpenMP team and slow the model thread down
        one_torch_thread()
        self.store = RegistryStore.from_settings(settings)
        self.pool = ModelPool(
            self.store,
            limits.model_name,
            self._load,
            cache_size=limits.version_cache_size,
            refresh_interval_s=limits.refresh_interval_s,
        )
        self.pool.start()
        self.batcher = Batcher(
            self._run_batch,
            max_batch_size=limits.max_batch_size,
            max_latency_ms=limits.max_latency_ms,
            max_wait_ms=limits.max_wait_ms,
            name=limits.model_name,
            on_batch=self._record_batch,
            on_run=self._record_running,
        )

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

    async def batched(self, items: Sequence[Any], run: RunOn[M, T], deadline: float | None = None) -> list[T]:
        """``run(loaded_model, items)`` on the model thread, batched with other requests' items for the
        same ``run`` and model version; results in the items' order. ``run`` must be a bound method
        (batches are keyed by it). ``deadline`` (``time.monotonic()``): items still queued then never run."""
        groups = by_version(items)
        with http_errors():
            if len(groups) == 1:
                return await self.batcher.submit(run, next(iter(groups)), list(items), deadline)
            parts = await asyncio.gather(
                *(
                    self.batcher.submit(run, version, [items[i] for i in idx], deadline)
                    for version, idx in groups.items()
                )
            )
        out: list[Any] = [None] * len(items)
        for idx, results in zip(groups.values(), parts, strict=True):
            for i, result in zip(idx, results, strict=True):
                out[i] = result
        return out

    async def respond(self, items: Sequence[Any], run: RunOn[M, Any]) -> Any:
        """:meth:`batched`, answered as a JSON list (see :func:`json_response`)."""
        return json_response(await self.batched(items, run))

    def _run_batch(self, run: Any, version: Any, items: list[Any]) -> list[Any]:
        return run(self.pool.get(version), items)  # type: ignore[no-any-return]

    @staticmethod
    def _operation(op: Any) -> str:
        return getattr(op, "__name__", str(op)).lstrip("_")

    def _record_running(self, op: Any, running: bool) -> None:
        MODEL_BUSY.labels(service=type(self).__name__, operation=self._operation(op)).set(int(running))

    def _record_batch(self, stats: BatchStats) -> None:
        op = self._operation(stats.op)
        BATCH_SIZE.labels(service=type(self).__name__, operation=op).observe(stats.size)
        QUEUE_SECONDS.labels(service=type(self).__name__, operation=op).observe(stats.queue_s)
        MODEL_SECONDS.labels(service=type(self).__name__, operation=op).observe(stats.run_s)

    def shutdown(self) -> None:
        self.batcher.stop()
        self.pool.stop()

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
