"""The gate in front of every service (ASGI): API keys and scopes, content types, a cap on requests in
flight, and the audit log of mutating calls.

For each API route, in this order:

1. **Key and scope.** ``Authorization: Bearer <key>``; 401 without a key or with one the service does
   not know, 403 when the key lacks the route's scope (the message names it).
2. **Content type.** A body that says it is anything but JSON gets 415 (every API takes JSON; BentoML
   would try to parse a multipart body without a boundary and fail with a 500).
3. **Backpressure.** Over ``max_concurrency`` requests in flight in this worker: 429 with
   ``Retry-After``, so the queue stays bounded and the client backs off.
4. **Audit.** A call to a ``write`` or ``admin`` route, allowed or not, is one JSON line: key name,
   operation, target, status, outcome, request id.

Every API call has a request id (``infra.logs``): the caller's ``X-Request-ID`` when it is a valid one,
a fresh one otherwise; it is in every log line the call causes, in every call to another service it
makes, and in the response's ``X-Request-ID``. A call the gate lets through ends with one
``vlmops.access`` line (operation, status, milliseconds).

Probes (``/livez``, ``/readyz``), ``/metrics`` and the OpenAPI documents are not API routes and pass
through untouched. A service bound to a non-loopback address with no keys refuses to start, unless
``VLMOPS_AUTH__DISABLED=true``.
"""

from __future__ import annotations

import contextvars
import ipaddress
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO

import bentoml
import psutil
from bentoml.exceptions import BentoMLException
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from infra.auth import KeyRing, Principal, Scope, parse_lines
from infra.errors import Misconfigured, VlmopsError
from infra.logs import current_request_id, request_id_from, reset_request_id, set_request_id
from infra.settings import AuthSettings
from services.fastpath import ASGIApp, Message, Receive, Send
from services.fastpath import Scope as AsgiScope

log = logging.getLogger("vlmops.guard")
access = logging.getLogger("vlmops.access")

OPEN = Principal("-", Scope.admin)  # who calls when auth is off
REJECTED = bentoml.metrics.Counter(
    name="vlmops_http_rejected_total",
    documentation="requests the gate answered itself (401, 403, 413, 415, 429), by operation and status",
    labelnames=["operation", "status"],
)


@dataclass
class Call:
    """The call being served, for the audit line; handlers name its target with :func:`audit_target`."""

    key: str
    operation: str
    target: str | None = None


CURRENT_CALL: contextvars.ContextVar[Call | None] = contextvars.ContextVar("vlmops_call", default=None)


def audit_target(target: str) -> None:
    """Name what the current call acts on (a collection) in its audit line."""
    call = CURRENT_CALL.get()
    if call is not None:
        call.target = target[:200]


def outcome(status: int) -> str:
    if status == 0:
        return "aborted"  # the client went away before an answer
    if status < 400:
        return "ok"
    if status in (401, 403):
        return "denied"
    return "rejected" if status < 500 else "failed"


class AuditLog:
    """JSON lines, one per mutating call, to a file (appended) or to stdout (``-``)."""

    def __init__(self, where: str, service: str) -> None:
        self.service = service
        self._lock = threading.Lock()
        self._out: IO[str] = sys.stdout if where == "-" else open(where, "a", buffering=1)  # noqa: SIM115

    def record(self, call: Call, status: int) -> None:
        line = json.dumps(
            {
                "ts": round(time.time(), 3),
                "service": self.service,
                "key": call.key,
                "operation": call.operation,
                "target": call.target,
                "status": status,
                "outcome": outcome(status),
                "request_id": current_request_id(),
            }
        )
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()


def listening_addresses(pid: int | None = None) -> list[str]:
    """The addresses this process listens on (the server socket it inherited from BentoML's arbiter)."""
    conns = psutil.Process(pid or os.getpid()).net_connections(kind="inet")
    return sorted({c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def key_ring(auth: AuthSettings, addresses: Iterable[str], service: str) -> KeyRing | None:
    """The keys this service checks; None (no checks) only when auth is explicitly off, or when no key is
    configured and the service listens on loopback alone (the embedded default)."""
    if auth.disabled:
        return None
    ring = KeyRing(parse_lines(auth.keys.get_secret_value()))
    if len(ring):
        return ring
    exposed = [a for a in addresses if not is_loopback(a)]
    if exposed:
        raise Misconfigured(
            f"{service} listens on {', '.join(exposed)} with no API keys configured: refusing to start. Set "
            "VLMOPS_AUTH__KEYS to the hash lines of `vlmops keys create`, bind to 127.0.0.1, or set "
            "VLMOPS_AUTH__DISABLED=true when another gate in front of it checks every caller"
        )
    return None


def client_error(exc: BaseException) -> bool:
    if isinstance(exc, ValidationError | ClientDisconnect):
        return True
    if isinstance(exc, BentoMLException):
        return int(exc.error_code.value) < 500
    return isinstance(exc, VlmopsError) and exc.http_status < 500


class ClientErrorsAtInfo(logging.Filter):
    """BentoML logs every error an API raises at ERROR with its traceback; a client's mistake (a 4xx) is
    not the server's error: one INFO line, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and client_error(exc):
            shown = exc.__cause__ if isinstance(exc.__cause__, VlmopsError) else exc  # NotFound, not BentoML's
            record.msg = (
                f"{record.getMessage()}: {type(shown).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            )
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def quiet_client_errors() -> None:
    target = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(f, ClientErrorsAtInfo) for f in target.filters):
        target.addFilter(ClientErrorsAtInfo())


@dataclass(frozen=True)
class Route:
    operation: str
    scope: Scope


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


@dataclass(slots=True)
class Asked:
    """The request headers the gate reads."""

    authorization: bytes | None = None
    content_type: bytes | None = None
    length: bytes | None = None
    request_id: bytes | None = None

    @classmethod
    def of(cls, scope: AsgiScope) -> Asked:
        asked = cls()
        for name, value in scope["headers"]:  # one pass over the headers
            if name == b"authorization":
                asked.authorization = value
            elif name == b"content-type":
                asked.content_type = value
            elif name == b"content-length":
                asked.length = value
            elif name == b"x-request-id":
                asked.request_id = value
        return asked


class Guard:
    """ASGI middleware: ``routes`` maps an API's path to its operation and scope."""

    def __init__(
        self,
        app: ASGIApp,
        routes: dict[str, Route],
        keys: KeyRing | None,
        audit: AuditLog | None,
        max_concurrency: int,
        max_body_bytes: int,
        retry_after_s: int = 1,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.routes = routes
        self.keys = keys
        self.audit = audit
        self.max_concurrency = max_concurrency
        self.retry_after = str(retry_after_s).encode()
        self.in_flight = 0

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        asked = Asked.of(scope)
        rid = request_id_from(_text(asked.request_id))
        token = set_request_id(rid)  # this task's context: what the app runs, in tasks or threads, copies it
        try:
            await self._gate(scope, receive, send, route, asked, [(b"x-request-id", rid.encode())])
        finally:
            reset_request_id(token)

    async def _gate(
        self,
        scope: AsgiScope,
        receive: Receive,
        send: Send,
        route: Route,
        asked: Asked,
        echo: list[tuple[bytes, bytes]],
    ) -> None:
        """``echo``: the request id's header, on every answer."""
        call = Call("-", route.operation)
        content_type, length = asked.content_type, asked.length
        try:
            principal = OPEN if self.keys is None else self.keys.authenticate(_text(asked.authorization))
            call.key = principal.name
            principal.require(route.scope, route.operation)
        except VlmopsError as exc:
            challenge = [(b"www-authenticate", b'Bearer realm="vlmops"')] if exc.http_status == 401 else []
            await self._refuse(send, route, call, exc.http_status, str(exc), [*echo, *challenge])
            return
        if content_type is not None and content_type.split(b";", 1)[0].strip().lower() != b"application/json":
            message = f"{route.operation} takes a JSON body: send Content-Type: application/json"
            await self._refuse(send, route, call, 415, message, echo)
            return
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            message = f"the request body is {int(length)} bytes, over the limit of {self.max_body_bytes} bytes"
            await self._refuse(send, route, call, 413, message, echo)
            return
        if self.in_flight >= self.max_concurrency:
            message = f"{self.max_concurrency} requests are in flight on this worker, its limit: retry later"
            await self._refuse(send, route, call, 429, message, [*echo, (b"retry-after", self.retry_after)], quiet=True)
            return
        self.in_flight += 1
        status = 0  # no answer: the client went away
        received = 0
        too_large = False
        started = time.perf_counter()
        token = CURRENT_CALL.set(call)

        async def counted() -> Message:
            """A body sent without a length is cut off at the limit (the app sees a disconnect)."""
            nonlocal received, too_large
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                too_large = True
                return {"type": "http.disconnect"}
            return message

        async def watch(message: Message) -> None:
            nonlocal status
            if too_large:  # the app's answer to the cut-off body is replaced by the 413
                if message["type"] == "http.response.start":
                    status = 413
                    await _reply(send, 413, f"the request body is over the limit of {self.max_body_bytes} bytes", echo)
                return
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message = {**message, "headers": [*message.get("headers", ()), *echo]}
            await send(message)

        try:
            await self.app(scope, counted, watch)
            if too_large and status == 0:  # the app gave up on the cut-off body without an answer
                status = 413
                await _reply(send, 413, f"the request body is over the limit of {self.max_body_bytes} bytes", echo)
        finally:
            CURRENT_CALL.reset(token)
            self.in_flight -= 1
            self._audit(route, call, status)
            if access.isEnabledFor(logging.INFO):  # off (vlmops.access above INFO): no work per request
                ms = (time.perf_counter() - started) * 1000
                access.info(
                    "%s %d %.1f ms",
                    route.operation,
                    status,
                    ms,
                    extra={"operation": route.operation, "status": status, "duration_ms": round(ms, 2)},
                )

    async def _refuse(
        self,
        send: Send,
        route: Route,
        call: Call,
        status: int,
        message: str,
        headers: list[tuple[bytes, bytes]] | None = None,
        quiet: bool = False,
    ) -> None:
        """Answer before the app sees the request; logged at INFO (a 429 flood is not logged: the
        ``vlmops_http_rejected_total`` counter has them)."""
        if not quiet:
            log.info("%s %d: %s", route.operation, status, message)
        REJECTED.labels(operation=route.operation, status=str(status)).inc()
        await _reply(send, status, message, headers)
        self._audit(route, call, status)

    def _audit(self, route: Route, call: Call, status: int) -> None:
        if self.audit is not None and route.scope > Scope.read:
            self.audit.record(call, status)


async def _reply(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps([{"error": message}]).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})
