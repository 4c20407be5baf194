"""Closed-loop HTTP/1.1 load: ``clients`` keep-alive connections, each sending its next request as
soon as the last one is answered (``python -m bench.embedding`` and ``bench.vision`` use it).

The load generator shares the machine with the server it measures, so it is made cheap: requests are
prebuilt bytes written straight to the socket, and responses are parsed by httptools (C) on uvloop.
A general client (aiohttp) spent 0.43 ms of CPU per request here, and on 2 cores that time sat on the
critical path of every closed-loop round trip (answer, parse, send again) between two batches.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any
from urllib.parse import urlsplit

import httptools
import uvloop


class _Connection(asyncio.Protocol):
    """One keep-alive connection: :meth:`request` writes prebuilt bytes and waits for the response."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[tuple[int, int]] | None = None
        self.size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc or ConnectionError("the server closed the connection"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.size += len(body)

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result((self.parser.get_status_code(), self.size))

    async def request(self, raw: bytes) -> tuple[int, int]:
        """(status, body bytes) of the response to ``raw``."""
        assert self.transport is not None
        self.size = 0
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.done


def _raw_post(host: str, route: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (
        f"POST {route} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n{extra}"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _load(
    url: str, route: str, payloads: list[dict[str, Any]], clients: int, seconds: float, headers: dict[str, str] | None
) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    raws = [_raw_post(parts.netloc, route, json.dumps(p).encode(), headers) for p in payloads]
    loop = asyncio.get_running_loop()

    async def connect() -> _Connection:
        return (await loop.create_connection(_Connection, host, port))[1]

    conns = [await connect() for _ in range(clients)]
    await conns[0].request(raws[0])  # warm-up
    latencies: list[float] = []
    errors: dict[int, int] = {}
    received = 0
    deadline = time.perf_counter() + seconds

    async def client(k: int, conn: _Connection) -> None:
        nonlocal received
        i = k
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            try:
                status, size = await conn.request(raws[i % len(raws)])
            except ConnectionError:  # the server closed it (as it may after an error): count, reconnect
                status, size = 0, 0
                conn = conns[k] = await connect()
            i += clients
            if status != 200:
                errors[status] = errors.get(status, 0) + 1
                continue
            received += size
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(client(k, conn) for k, conn in enumerate(conns)))
    finally:
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()
    wall = time.perf_counter() - t0
    ok = sorted(latencies) or [float("nan")]
    return {
        "requests_per_s": len(latencies) / wall,
        "p50_ms": statistics.median(ok) * 1000,
        "p99_ms": ok[max(0, int(len(ok) * 0.99) - 1)] * 1000,
        "errors": sum(errors.values()),
        "error_statuses": {str(k): v for k, v in errors.items()},
        "requests": len(latencies),
        "bytes_per_response": received / max(1, len(latencies)),
    }


def load(
    url: str,
    route: str,
    payloads: list[dict[str, Any]],
    clients: int,
    seconds: float,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``clients`` concurrent closed-loop clients POSTing ``payloads`` (JSON) round-robin to ``route``
    for ``seconds`` (with ``headers``, e.g. an API key): requests/s, p50/p99 latency of the answered
    ones, errors by status, bytes."""
    return uvloop.run(_load(url, route, payloads, clients, seconds, headers))


__all__ = ["load"]
