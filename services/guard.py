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
   operation, target, status, outcome.

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

import psutil
from bentoml.exceptions import BentoMLException
from pydantic import ValidationError

from infra.auth import KeyRing, Principal, Scope, parse_lines
from infra.errors import Misconfigured, VlmopsError
from infra.settings import AuthSettings
from services.fastpath import ASGIApp, Message, Receive, Send
from services.fastpath import Scope as AsgiScope

log = logging.getLogger("vlmops.guard")

OPEN = Principal("-", Scope.admin)  # who calls when auth is off


@dataclass
class Call:
    """The call being served, for the audit line; handlers name its target with :func:`audit_target`."""

    key: str
    operation: str
    target: str | None = None


_CALL: contextvars.ContextVar[Call | None] = contextvars.ContextVar("vlmops_call", default=None)


def audit_target(target: str) -> None:
    """Name what the current call acts on (a collection) in its audit line."""
    call = _CALL.get()
    if call is not None:
        call.target = target[:200]


class AuditLog:
    """JSON lines, one per mutating call, to a file (appended) or to stdout (``-``)."""

    def __init__(self, where: str, service: str) -> None:
        self.service = service
        self._lock = threading.Lock()
        self._out: IO[str] = sys.stdout if where == "-" else open(where, "a", buffering=1)  # noqa: SIM115

    def record(self, call: Call, status: int) -> None:
        outcome = (
            "ok" if status < 400 else "denied" if status in (401, 403) else "rejected" if status < 500 else "failed"
        )
        line = json.dumps(
            {
                "ts": round(time.time(), 3),
                "service": self.service,
                "key": call.key,
                "operation": call.operation,
                "target": call.target,
                "status": status,
                "outcome": outcome,
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
    if isinstance(exc, ValidationError):
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
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
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


def _header(scope: AsgiScope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class Guard:
    """ASGI middleware: ``routes`` maps an API's path to its operation and scope."""

    def __init__(
        self,
        app: ASGIApp,
        routes: dict[str, Route],
        keys: KeyRing | None,
        audit: AuditLog | None,
        max_concurrency: int,
        retry_after_s: int = 1,
    ) -> None:
        self.app = app
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
        call = Call("-", route.operation)
        try:
            principal = OPEN if self.keys is None else self.keys.authenticate(self._authorization(scope))
            call.key = principal.name
            principal.require(route.scope, route.operation)
        except VlmopsError as exc:
            status = exc.http_status
            log.info("%s %s: %s", route.operation, status, exc)
            headers = [(b"www-authenticate", b'Bearer realm="vlmops"')] if status == 401 else []
            await _reply(send, status, str(exc), headers)
            self._audit(route, call, status)
            return
        content_type = _header(scope, b"content-type")
        if content_type is not None and content_type.split(b";", 1)[0].strip().lower() != b"application/json":
            message = f"{route.operation} takes a JSON body: send Content-Type: application/json"
            log.info("%s 415: %s", route.operation, message)
            await _reply(send, 415, message)
            self._audit(route, call, 415)
            return
        if self.in_flight >= self.max_concurrency:
            message = f"{self.max_concurrency} requests are in flight on this worker, its limit: retry later"
            await _reply(send, 429, message, [(b"retry-after", self.retry_after)])
            self._audit(route, call, 429)
            return
        self.in_flight += 1
        status = 500
        token = _CALL.set(call)

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            _CALL.reset(token)
            self.in_flight -= 1
            self._audit(route, call, status)

    @staticmethod
    def _authorization(scope: AsgiScope) -> str | None:
        value = _header(scope, b"authorization")
        return value.decode("latin-1") if value is not None else None

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
