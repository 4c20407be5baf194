"""The edge of every gRPC call (see ``services.rpc.server`` for the server around it): request id, API
key and scope, the worker's cap on requests in flight (shared with HTTP), typed errors mapped to status
codes, metrics, access and audit lines."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

import bentoml
import grpc
from bentoml.exceptions import BentoMLException
from google.protobuf.descriptor import ServiceDescriptor
from pydantic import ValidationError

from infra.auth import Forbidden, KeyRing, Scope, Unauthenticated
from infra.errors import (
    Conflict,
    DeadlineExceeded,
    InvalidInput,
    NotBuilt,
    NotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    VlmopsError,
)
from infra.logs import request_id_from, reset_request_id, set_request_id
from services.guard import CURRENT_CALL, OPEN, AuditLog, Call

log = logging.getLogger("vlmops.grpc")
access = logging.getLogger("vlmops.access")
F = TypeVar("F", bound=Callable[..., Any])

REQUESTS = bentoml.metrics.Counter(
    name="vlmops_grpc_requests_total",
    documentation="gRPC calls answered, by method and status code",
    labelnames=["method", "code"],
)
SECONDS = bentoml.metrics.Histogram(
    name="vlmops_grpc_request_seconds",
    documentation="time from a gRPC call's start to its status, by method",
    labelnames=["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0),
)

# most specific first: PayloadTooLarge and Conflict are InvalidInput too
CODES: tuple[tuple[type[VlmopsError], grpc.StatusCode], ...] = (
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (Forbidden, grpc.StatusCode.PERMISSION_DENIED),
    (PayloadTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotBuilt, grpc.StatusCode.FAILED_PRECONDITION),
    (Conflict, grpc.StatusCode.ALREADY_EXISTS),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
)
BY_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
HTTP_OF = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.CANCELLED: 0,
}
INTERNAL = "an unexpected error has occurred: see the server log"


def vlmops_cause(exc: BaseException) -> VlmopsError | None:
    """The typed error behind ``exc`` (the edge's BentoML exceptions carry it as their cause)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, VlmopsError):
            return seen
        seen = seen.__cause__
    return None


def validation_message(exc: ValidationError, prefix: str = "", offset: int = 0) -> str:
    """Where and what, for the first errors; ``prefix`` + the location (its leading index + ``offset``)."""
    parts = []
    for err in exc.errors(include_url=False, include_context=False, include_input=False)[:5]:
        loc = list(err["loc"])
        if loc and isinstance(loc[0], int):
            loc[0] += offset
        where = prefix + ".".join(str(p) for p in loc)
        parts.append(f"{where}: {err['msg']}" if where else err["msg"])
    more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return "; ".join(parts) + more


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The code and message a failed call gets; INTERNAL for what is not a client's mistake or a known state."""
    if isinstance(exc, ValidationError):
        return grpc.StatusCode.INVALID_ARGUMENT, validation_message(exc)
    cause = vlmops_cause(exc)
    if cause is not None:
        for kind, code in CODES:
            if isinstance(cause, kind):
                return code, str(cause)
        return grpc.StatusCode.INTERNAL, INTERNAL
    if isinstance(exc, BentoMLException) and int(exc.error_code.value) in BY_HTTP:
        return BY_HTTP[int(exc.error_code.value)], str(exc)
    return grpc.StatusCode.INTERNAL, INTERNAL


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's deadline as ``time.monotonic()`` (None: it set none)."""
    left = context.time_remaining()
    return None if left is None else time.monotonic() + left


ERROR_KEY = "vlmops-error"  # trailing metadata: the typed error's class name (PayloadTooLarge, Overloaded, ...)


async def abort(
    context: grpc.aio.ServicerContext, rid: str, exc: BaseException, code: grpc.StatusCode, message: str
) -> None:
    """End the call with ``code``; the trailing metadata names the typed error, for clients that map it back."""
    cause = vlmops_cause(exc)
    kind = type(cause).__name__ if cause is not None and code is not grpc.StatusCode.INTERNAL else ""
    context.set_trailing_metadata((("x-request-id", rid), (ERROR_KEY, kind)))
    await context.abort(code, message)


class InFlight(Protocol):
    """The HTTP gate's count of requests in this worker and its cap, which gRPC calls share."""

    in_flight: int
    max_concurrency: int


def metadata_of(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}


class GrpcEdge:
    """Keys, the shared cap, errors, metrics, access and audit lines of every call (see the module's doc)."""

    def __init__(self, keys: KeyRing | None, gate: InFlight, audit: AuditLog | None) -> None:
        self.keys = keys
        self.gate = gate
        self.audit = audit
        self._series: dict[tuple[str, grpc.StatusCode], tuple[Any, Any]] = {}

    @contextlib.asynccontextmanager
    async def call(self, operation: str, scope: Scope, context: grpc.aio.ServicerContext) -> AsyncIterator[Call]:
        asked = metadata_of(context)
        rid = request_id_from(asked.get("x-request-id"))
        rid_token = set_request_id(rid)
        context.set_trailing_metadata((("x-request-id", rid),))
        call = Call("-", operation)
        code = grpc.StatusCode.OK
        admitted = False
        started = time.perf_counter()
        try:
            try:
                principal = OPEN if self.keys is None else self.keys.authenticate(asked.get("authorization"))
                call.key = principal.name
                principal.require(scope, operation)
                if self.gate.in_flight >= self.gate.max_concurrency:
                    raise Overloaded(
                        f"{self.gate.max_concurrency} requests are in flight on this worker, its limit: retry later"
                    )
            except VlmopsError as exc:
                code, message = status_of(exc)
                if not isinstance(exc, Overloaded):  # a flood of these is counted, not logged
                    log.info("%s %s: %s", operation, code.name, message)
                await abort(context, rid, exc, code, message)
            self.gate.in_flight += 1
            admitted = True
            call_token = CURRENT_CALL.set(call)
            try:
                yield call
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED  # the client went away, or its deadline passed
                raise
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                code, message = status_of(exc)
                if code is grpc.StatusCode.INTERNAL:
                    log.error("%s failed", operation, exc_info=exc)
                else:  # the client's mistake, or a known state: one line, no traceback
                    log.info("%s %s: %s", operation, code.name, message.splitlines()[0] if message else "")
                await abort(context, rid, exc, code, message)
            finally:
                CURRENT_CALL.reset(call_token)
        finally:
            if admitted:
                self.gate.in_flight -= 1
            self._record(scope, call, code, time.perf_counter() - started)
            reset_request_id(rid_token)

    def _record(self, scope: Scope, call: Call, code: grpc.StatusCode, seconds: float) -> None:
        series = self._series.get((call.operation, code))
        if series is None:  # each labelled series looked up once (half the cost of a call's metrics)
            series = (REQUESTS.labels(method=call.operation, code=code.name), SECONDS.labels(method=call.operation))
            self._series[(call.operation, code)] = series
        series[0].inc()
        series[1].observe(seconds)
        if self.audit is not None and scope > Scope.read:
            self.audit.record(call, HTTP_OF.get(code, 500))
        if access.isEnabledFor(logging.INFO):
            ms = seconds * 1000
            access.info(
                "%s %s %.1f ms",
                call.operation,
                code.name,
                ms,
                extra={"operation": call.operation, "status": code.name, "duration_ms": round(ms, 2)},
            )


class Servicer(Protocol):
    """What a service module's gRPC servicer has: the service it implements and the edge its calls pass."""

    descriptor: ServiceDescriptor
    edge: GrpcEdge


def rpc(scope: Scope) -> Callable[[F], F]:
    """A servicer method, called through :meth:`GrpcEdge.call` with ``scope``; unary or client-streaming
    (``async def``), or server-streaming (``async def`` with ``yield``)."""

    def wrap(fn: F) -> F:
        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def streaming(self: Servicer, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async with self.edge.call(fn.__name__, scope, context):
                    async for answer in fn(self, request, context):
                        yield answer

            return streaming  # type: ignore[return-value]

        @functools.wraps(fn)
        async def unary(self: Servicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with self.edge.call(fn.__name__, scope, context):
                return await fn(self, request, context)

        return unary  # type: ignore[return-value]

    return wrap
