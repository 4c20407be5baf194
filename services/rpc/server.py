"""The gRPC server of a service process: ``grpc.aio`` on the service's second port, in the event loop of
its HTTP API, so a gRPC item joins the same batcher and the same model thread as an HTTP item.

Started and stopped with the ASGI app (:class:`GrpcLifespan`, put in place by ``services.gateway``):
after BentoML has made the service instance, each API worker binds ``VLMOPS_<SERVICE>__GRPC_PORT`` on
the addresses its HTTP socket listens on (``SO_REUSEPORT``: the workers share the port, as they share
the HTTP one). What every call gets, in :meth:`GrpcEdge.call`:

1. a request id: the caller's ``x-request-id`` metadata when valid, a fresh one otherwise; in every log
   line of the call and in the trailing metadata;
2. the API key (``authorization: Bearer <key>`` metadata) and the method's scope, checked by the HTTP
   gate's own :class:`~infra.auth.KeyRing`: UNAUTHENTICATED, PERMISSION_DENIED;
3. the worker's cap on requests in flight, shared with HTTP: RESOURCE_EXHAUSTED over it;
4. typed errors mapped to codes with their messages (:func:`status_of`); a client's mistake is one INFO
   line, anything else is logged with its traceback and answered INTERNAL;
5. ``vlmops_grpc_requests_total`` and ``vlmops_grpc_request_seconds`` on ``/metrics``; one
   ``vlmops.access`` line; an audit line for ``write`` and ``admin`` methods.

Besides the services: ``grpc.health.v1`` (NOT_SERVING until the service is ready: for a model service,
until its production version is loaded) and server reflection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.fastpath import ASGIApp, Message, Receive, Send
from services.fastpath import Scope as AsgiScope
from services.rpc.edge import Servicer

log = logging.getLogger("vlmops.grpc")


def serialize(answer: Any) -> bytes:
    """A message, or its wire bytes already made (``services.rpc.wire``)."""
    return answer if isinstance(answer, bytes) else answer.SerializeToString()


def method_handlers(servicer: Servicer) -> dict[str, grpc.RpcMethodHandler]:
    """Each method of the servicer's service, with its request type from the descriptor."""
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    out = {}
    for method in servicer.descriptor.methods:
        make = kinds[(method.client_streaming, method.server_streaming)]
        request = GetMessageClass(method.input_type)
        out[method.name] = make(
            getattr(servicer, method.name), request_deserializer=request.FromString, response_serializer=serialize
        )
    return out


class GrpcLimits(Protocol):
    grpc_port: int
    grpc_max_message_bytes: int
    grpc_keepalive_s: float
    grpc_keepalive_timeout_s: float
    grpc_min_client_ping_s: float
    grpc_max_connection_age_s: float | None
    grpc_grace_s: float


def server_options(limits: GrpcLimits) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", limits.grpc_max_message_bytes),
        ("grpc.max_send_message_length", limits.grpc_max_message_bytes),
        ("grpc.keepalive_time_ms", int(limits.grpc_keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(limits.grpc_keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", int(limits.grpc_min_client_ping_s * 1000)),
        ("grpc.http2.max_ping_strikes", 2),
    ]
    if limits.grpc_max_connection_age_s is not None:
        age_ms = int(limits.grpc_max_connection_age_s * 1000)
        options += [("grpc.max_connection_age_ms", age_ms), ("grpc.max_connection_age_grace_ms", age_ms // 10 + 5000)]
    return options


def bind_addresses(hosts: Iterable[str], port: int) -> list[str]:
    """``host:port`` for each address the HTTP socket listens on (loopback when there is none)."""
    return [f"[{h}]:{port}" if ":" in h else f"{h}:{port}" for h in (sorted(set(hosts)) or ["127.0.0.1"])]


class Health(health.aio.HealthServicer):
    """``grpc.health.v1``; a ``Check`` first asks ``refresh`` (the status is never older than the call)."""

    def __init__(self, refresh: Callable[[], Any]) -> None:
        super().__init__()
        self.refresh = refresh

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await self.refresh()
        return await super().Check(request, context)


@dataclass
class GrpcServer:
    """One worker's server: its servicers, health (from ``ready``) and reflection."""

    limits: GrpcLimits
    servicers: Sequence[Servicer]
    ready: Callable[[], bool]
    hosts: Sequence[str]
    poll_s: float = 0.25

    def __post_init__(self) -> None:
        self.server: grpc.aio.Server | None = None
        self.health = Health(self.refresh)
        self.serving: bool | None = None
        self._watch: asyncio.Task[None] | None = None
        self.names = [s.descriptor.full_name for s in self.servicers]

    async def start(self) -> list[str]:
        """Bind and serve; the addresses bound."""
        server = grpc.aio.server(options=server_options(self.limits))
        for servicer in self.servicers:
            handlers = method_handlers(servicer)
            name = servicer.descriptor.full_name
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
            server.add_registered_method_handlers(name, handlers)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [*self.names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
        )
        addresses = bind_addresses(self.hosts, self.limits.grpc_port)
        for address in addresses:
            server.add_insecure_port(address)  # raises when the port cannot be bound
        await self.refresh()
        await server.start()
        self.server = server
        self._watch = asyncio.get_running_loop().create_task(self._follow_readiness())
        return addresses

    async def refresh(self) -> None:
        """Health from ``ready`` (a production version loaded, or lost), where it changed."""
        try:
            now = bool(self.ready())
        except Exception:  # a failing check is not serving, and must never stop the watcher
            log.exception("readiness check failed")
            now = False
        if now == self.serving:
            return
        self.serving = now
        status = health_pb2.HealthCheckResponse.SERVING if now else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.names):
            await self.health.set(name, status)

    async def _follow_readiness(self) -> None:
        """For ``Watch`` streams: health follows readiness without a ``Check``."""
        while True:
            await asyncio.sleep(self.poll_s)
            await self.refresh()

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self.server is not None:
            await self.health.enter_graceful_shutdown()
            await self.server.stop(self.limits.grpc_grace_s)
            self.server = None


class GrpcLifespan:
    """ASGI middleware: ``start()`` once the app has started (BentoML has made the service instance),
    ``stop()`` when it is asked to shut down; a server that cannot start fails the worker's startup."""

    def __init__(self, app: ASGIApp, start: Callable[[], Any], stop: Callable[[], Any]) -> None:
        self.app = app
        self.start = start
        self.stop = stop

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def started(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                try:
                    await self.start()
                except Exception as exc:
                    log.critical("the gRPC server cannot start: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": f"gRPC: {exc}"})
                    return
            await send(message)

        async def stopping() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.stop()
            return message

        await self.app(scope, stopping, started)
