"""The fast path: a service's item APIs served by a lean ASGI layer in front of BentoML's own stack.

Under load a model service's event loop does little but take requests in, validate their items and
hand them to the batcher; BentoML's generic request path around that (its metrics and tracing
middlewares, a timeout task, the request context, signature binding) cost 0.7 ms of the loop's
CPU per request under load, measured, while validating a text item costs tens of microseconds. With
32 closed-loop clients a batch of 32 cannot start before the loop has taken in 32 requests, so that
cost is paid 32 times per batch while the model waits, and on a CPU node the loop also shares
the cores with the model.

This layer answers ``POST`` with a JSON body to the routes of the APIs it is given, the same way
BentoML would: the API's own input model validates the body (the same items, validators and
limits), the API's own function runs on the service instance BentoML created, and errors get the
same status codes and bodies as BentoML gives them. Everything else (other methods, routes and
content types, ``/metrics``, the OpenAPI docs, health probes) goes on to BentoML unchanged.

What it leaves out for the requests it serves: BentoML's per-request OpenTelemetry span and its
``bentoml_service_request_*`` metrics (the layer records ``vlmops_http_requests_total`` and
``vlmops_http_request_seconds`` instead) and the access log. ``VLMOPS_<SERVICE>__FAST_PATH=false``
(or turning the access log on) sends every request through BentoML's stack again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException
from pydantic import ValidationError

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUESTS = bentoml.metrics.Counter(
    name="vlmops_http_requests_total",
    documentation="requests the fast path answered, by route and status",
    labelnames=["route", "status"],
)
SECONDS = bentoml.metrics.Histogram(
    name="vlmops_http_request_seconds",
    documentation="time from the request's body to its response on the fast path, by route",
    labelnames=["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

JSON_HEADERS = [(b"content-type", b"application/json")]
INTERNAL = "An unexpected error has occurred, please check the server log."


class RequestTooLarge(Exception):
    """The body is over the fast path's limit."""


def error_body(exc: Exception) -> tuple[int, bytes]:
    """The status and JSON body BentoML gives ``exc`` (``_bentoml_impl.server.app``); a body over the
    limit gets the 413 BentoML would give a ``PayloadTooLarge``."""
    if isinstance(exc, ValidationError):
        detail = exc.errors(include_context=False, include_input=False)
        body: Any = {"error": f"{exc.error_count()} validation error for {exc.title}", "detail": detail}
        return 400, json.dumps(body, default=str).encode()
    if isinstance(exc, RequestTooLarge):
        return 413, json.dumps([{"error": str(exc)}]).encode()
    if isinstance(exc, BentoMLException):
        status = int(exc.error_code.value)
        if status >= 500:
            return status, json.dumps({"error": INTERNAL if status == 500 else str(exc)}).encode()
        return status, json.dumps([{"error": str(exc)}]).encode()
    return 500, json.dumps({"error": INTERNAL}).encode()


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError("the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"the request body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return True  # BentoML reads a body without a content type as JSON too


class FastPath:
    """ASGI middleware: ``POST <route>`` with a JSON body for the named APIs of ``service``."""

    def __init__(
        self, app: ASGIApp, service: Any, apis: Iterable[str], max_body_bytes: int, enabled: bool = True
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.routes: dict[str, Any] = {}
        if enabled:
            for name in apis:
                method = service.apis[name]
                self.routes[method.route] = method

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if method is None or scope["method"] != "POST" or not is_json(scope):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            status, headers, body = await self._answer(method, receive)
        except ConnectionAbortedError:
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        REQUESTS.labels(route=method.route, status=str(status)).inc()
        SECONDS.labels(route=method.route).observe(time.perf_counter() - started)

    async def _answer(self, method: Any, receive: Receive) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        try:
            body = await read_body(receive, self.max_body_bytes)
            args = method.input_spec.model_validate_json(body or b"{}")
            instance = bentoml.get_current_service()
            response = await method.func(instance, **{k: getattr(args, k) for k in type(args).model_fields})
        except ConnectionAbortedError:
            raise
        except Exception as exc:
            status, payload = error_body(exc)
            if status >= 500:
                log.error("%s failed", method.route, exc_info=exc)
            else:  # the client's mistake: one line, no traceback
                log.info(
                    "%s %d: %s", method.route, status, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                )
            return status, JSON_HEADERS, payload
        return response.status_code, response.raw_headers, response.body
