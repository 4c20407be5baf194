"""``@gateway(...)``: the ASGI app of a vlmops service, its APIs each with a scope, behind the
:class:`~services.guard.Guard`, the item APIs through the :class:`~services.fastpath.FastPath`; and its
gRPC server (``services.rpc.server``) started and stopped with the app, sharing the gate's keys and cap.

    @gateway(LIMITS, SETTINGS.auth, read=("embed_text", "models"), hot=("embed_text",), grpc=servicers)
    @bentoml.service(...)
    class EmbeddingService: ...

``grpc(instance, edge)`` gives the service's gRPC servicers, made once BentoML has made the instance.

Every API must be given a scope: a service with an API that has none does not import.

In a ``bentoml serve`` process (its arbiter and each API worker: BentoML configures its server logging,
then imports the service) the decorator puts the process's logging in ``VLMOPS_LOG_FORMAT``
(``infra.logs``), BentoML's records included; imported anywhere else it leaves logging alone.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol, TypeVar

import bentoml
import psutil

from infra.auth import Scope
from infra.errors import Misconfigured
from infra.logs import configure_logging
from infra.settings import AuthSettings
from services.fastpath import FastPath
from services.guard import AuditLog, Guard, Route, key_ring, listening_addresses, quiet_client_errors
from services.rpc.edge import GrpcEdge, Servicer
from services.rpc.server import GrpcLifespan, GrpcLimits, GrpcServer

S = TypeVar("S", bound=bentoml.Service[Any])
log = logging.getLogger("vlmops.guard")


class EdgeLimits(GrpcLimits, Protocol):
    max_concurrency: int
    max_request_bytes: int
    access_log: bool


Servicers = Callable[[Any, GrpcEdge], Sequence[Servicer]]


@dataclass(frozen=True)
class Edge:
    scopes: dict[str, Scope]
    hot: tuple[str, ...]
    max_body_bytes: int
    max_concurrency: int
    auth: AuthSettings
    limits: EdgeLimits
    grpc: Servicers | None


class _GatedService(bentoml.Service[Any]):
    """A BentoML service whose ASGI app has the guard (and the fast path) in front (same slots:
    instances of ``bentoml.Service`` can take this class in place)."""

    __slots__ = ()

    def to_asgi(self, is_main: bool = True) -> Any:
        app = super().to_asgi(is_main)
        edge: Edge = self.inner.__vlmops_edge__
        if edge.hot:
            app = FastPath(app, self, edge.hot, edge.max_body_bytes)
        quiet_client_errors()
        # the listening socket is already open in this worker process (inherited from the arbiter)
        hosts = listening_addresses()
        try:
            keys = key_ring(edge.auth, hosts, self.name)
        except Misconfigured as exc:
            refuse_to_start(exc)
        routes = {self.apis[name].route: Route(name, scope) for name, scope in edge.scopes.items()}
        audit = AuditLog(edge.auth.audit_log, self.name)
        guard = Guard(app, routes, keys, audit, edge.max_concurrency, edge.max_body_bytes)
        make = edge.grpc
        if make is None or not edge.limits.grpc_port:
            return guard
        server: list[GrpcServer] = []

        async def start() -> None:
            instance = bentoml.get_current_service()
            servicers = make(instance, GrpcEdge(keys, guard, audit))
            ready = getattr(instance, "__is_ready__", lambda: True)
            grpc_server = GrpcServer(edge.limits, servicers, ready, hosts)
            bound = await grpc_server.start()
            server.append(grpc_server)
            log.info("%s: gRPC on %s (%s)", self.name, ", ".join(bound), ", ".join(grpc_server.names))

        async def stop() -> None:
            for s in server:
                await s.stop()

        return GrpcLifespan(guard, start, stop)


def bentoml_server_logging() -> bool:
    """BentoML's server logging is in place: this process is a ``bentoml serve`` arbiter or API worker
    (``bentoml._internal.log.configure_server_logging`` runs before either imports the service)."""
    from bentoml._internal.log import TraceRecordFilter

    return any(isinstance(f, TraceRecordFilter) for h in logging.getLogger().handlers for f in h.filters)


def refuse_to_start(exc: Misconfigured) -> NoReturn:
    """Stop the whole server, not only this worker (its arbiter would start another, forever)."""
    log.critical("%s", exc)
    parent = psutil.Process(os.getpid()).parent()
    if parent is not None and any("bentoml" in part for part in parent.cmdline()):
        parent.send_signal(signal.SIGTERM)
    raise SystemExit(2)


def gateway(
    limits: EdgeLimits,
    auth: AuthSettings,
    *,
    read: Iterable[str] = (),
    write: Iterable[str] = (),
    admin: Iterable[str] = (),
    hot: Iterable[str] = (),
    fast_path: bool = True,
    log_format: str = "text",
    grpc: Servicers | None = None,
) -> Callable[[S], S]:
    """Class decorator, above ``@bentoml.service``: every API with its scope; ``hot`` APIs through the
    fast path (unless it or the access log is off); logs in ``log_format`` when served; ``grpc``: the
    servicers of its gRPC port (``limits.grpc_port``, 0: none)."""
    scopes = {
        **dict.fromkeys(read, Scope.read),
        **dict.fromkeys(write, Scope.write),
        **dict.fromkeys(admin, Scope.admin),
    }

    def wrap(service: S) -> S:
        unknown = [name for name in [*scopes, *hot] if name not in service.apis]
        if unknown:
            raise ValueError(f"{service.name} has no API named {', '.join(unknown)}")
        unscoped = [name for name in service.apis if name not in scopes]
        if unscoped:
            raise ValueError(f"{service.name}: give the APIs {', '.join(unscoped)} a scope (read, write or admin)")
        on = fast_path and not limits.access_log
        service.inner.__vlmops_edge__ = Edge(
            scopes, tuple(hot) if on else (), limits.max_request_bytes, limits.max_concurrency, auth, limits, grpc
        )
        service.__class__ = _GatedService
        if bentoml_server_logging():
            configure_logging(log_format, service.name)
        return service

    return wrap
