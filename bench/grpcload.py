"""The gRPC side of ``bench.grpc_vs_http``: closed-loop gRPC clients of the embedding service (the
counterpart of ``bench.loadgen``), one streaming call, and a bare grpc.aio server answering prebuilt bytes
(the client's own ceiling)."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import uvloop

from infra.process import free_port
from services.proto.vlmops.v1 import common_pb2, embedding_pb2

METHODS = {"texts": "/vlmops.v1.Embedding/EmbedText", "images": "/vlmops.v1.Embedding/EmbedImage"}
STREAM = "/vlmops.v1.Embedding/EmbedTextStream"
CALL_TIMEOUT_S = 600.0
# One connection per channel (grpc core otherwise shares one subchannel between channels with equal
# arguments, so "N channels" would still be one TCP connection); messages as large as the service takes.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]

# The gRPC client, and why it is not what limits the gRPC figures (measured on the 2-core machine, with the
# toy CLIP, against the service and against --null-server, a bare grpc.aio server answering prebuilt bytes):
# - requests are prebuilt wire bytes and answers are kept as bytes (``unary_unary`` without serializers):
#   no protobuf work in the client, as bench.loadgen writes prebuilt HTTP bytes and does not parse JSON;
# - Python's gRPC costs 0.3-0.45 ms of client CPU per unary call however it is driven: grpc.aio with one
#   shared channel, 4, or one per client (one connection each); the sync API from 32 threads, or by chained
#   futures. bench.loadgen costs ~0.1 ms. Of those, grpc.aio on uvloop (as bench.loadgen runs, and as the
#   service runs its own grpc.aio) was the cheapest, ~10 % under the default asyncio loop, and 1 channel
#   was as fast as 4 and faster than 32 at 32 clients (DEFAULT_CHANNELS; ``--channels`` to try others);
# - at 32 clients the client used ~0.2 of a core, the service ~0.9 (its event loop and model thread share
#   one GIL: about one core is all a worker gets) for both protocols, and the same client against the null
#   server answered 2-4x what the service did: the service is the bottleneck. The client's CPU does sit
#   on each closed-loop round trip (~0.75 ms more than bench.loadgen's at 1 client: part of gRPC's p50
#   there). Every window records both sides' CPU per request (client_cpu_us, server_cpu_us) and the
#   service's batches (mean_batch, model_ms_per_batch), and each run re-measures the ceiling.
DEFAULT_CHANNELS = 1

Window = Callable[[], dict[str, Any]]  # one measured window: bench.loadgen's figures


# ---------------------------------------------------------------------------------------------- clients
def summary(latencies: list[float], errors: dict[str, int], received: int, wall: float) -> dict[str, Any]:
    """bench.loadgen's figures of a window."""
    ok = sorted(latencies) or [float("nan")]
    return {
        "requests_per_s": len(latencies) / wall,
        "p50_ms": statistics.median(ok) * 1000,
        "p99_ms": ok[max(0, int(len(ok) * 0.99) - 1)] * 1000,
        "errors": sum(errors.values()),
        "error_statuses": errors,
        "requests": len(latencies),
        "bytes_per_response": received / max(1, len(latencies)),
    }


async def _grpc_load(
    target: str, method: str, payloads: list[bytes], clients: int, channels: int, seconds: float
) -> dict[str, Any]:
    """``clients`` closed-loop gRPC clients spread over ``channels`` channels (one connection each)."""
    chans = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(min(channels, clients))]
    try:
        calls = [ch.unary_unary(method) for ch in chans]  # bytes in, bytes out
        for call in calls:  # connect and warm up, outside the window
            await call(payloads[0], timeout=CALL_TIMEOUT_S)
        latencies: list[float] = []
        errors: dict[str, int] = {}
        received = 0
        deadline = time.perf_counter() + seconds

        async def client(k: int) -> None:
            nonlocal received
            call, i = calls[k % len(calls)], k
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                try:
                    answer = await call(payloads[i % len(payloads)], timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                    i += clients
                    continue
                i += clients
                received += len(answer)
                latencies.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        wall = time.perf_counter() - t0
    finally:
        for ch in chans:
            await ch.close()
    return summary(latencies, errors, received, wall)


def grpc_load(
    target: str, method: str, payloads: list[bytes], clients: int, seconds: float, channels: int = DEFAULT_CHANNELS
) -> dict[str, Any]:
    """:func:`bench.loadgen.load`'s counterpart: ``payloads`` are serialized request messages."""
    return uvloop.run(_grpc_load(target, method, payloads, clients, channels, seconds))


async def _stream_once(target: str, request: bytes) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as ch:
        await asyncio.wait_for(ch.channel_ready(), 60)
        call = ch.unary_stream(STREAM)
        chunks = received = 0
        t0 = time.perf_counter()
        async for chunk in call(request, timeout=CALL_TIMEOUT_S):
            chunks += 1
            received += len(chunk)
        return {"seconds": time.perf_counter() - t0, "chunks": chunks, "bytes": received}


def stream_once(target: str, request: bytes) -> dict[str, Any]:
    """One EmbedTextStream call (connected before the clock starts); its chunks kept as bytes."""
    return uvloop.run(_stream_once(target, request))


# ---------------------------------------------------------------------------------------------- CPU
def null_answer(dim: int) -> bytes:
    """An EmbedTextResponse the size of the service's answer to one text."""
    ref = common_pb2.ModelRef(model="bench-clip", version="1")
    row = embedding_pb2.TextEmbedding(vector=[0.5] * dim, dim=dim, model=ref)
    return embedding_pb2.EmbedTextResponse(embeddings=[row]).SerializeToString()


async def serve_null(port: int, answer: bytes) -> None:
    async def embed(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return answer

    handler = grpc.unary_unary_rpc_method_handler(embed)  # no serializers: bytes in, bytes out
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("vlmops.v1.Embedding", {"EmbedText": handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


@contextlib.contextmanager
def null_server(dim: int) -> Iterator[str]:
    """A grpc.aio server in a process of its own answering EmbedText with prebuilt bytes; yields its target."""
    port = free_port()
    cmd = [sys.executable, "-m", "bench.grpcload", str(port), str(dim)]
    proc = subprocess.Popen(cmd)
    try:
        ch = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(ch).result(timeout=60)
        ch.close()
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


def client_ceiling(payloads: list[bytes], dim: int, clients: int, seconds: float, channels: int) -> dict[str, Any]:
    """The gRPC client alone (against the null server, which shares the machine: a lower bound)."""
    with null_server(dim) as target:
        grpc_load(target, METHODS["texts"], payloads, clients, 0.5, channels)  # warm-up
        c0 = time.process_time()
        r = grpc_load(target, METHODS["texts"], payloads, clients, seconds, channels)
        r["client_cpu_us"] = (time.process_time() - c0) / max(1, r["requests"]) * 1e6
    print(
        f"  gRPC client alone (null server), x{clients}: {r['requests_per_s']:.0f}/s, "
        f"{r['client_cpu_us']:.0f} us CPU/request",
        flush=True,
    )
    return r


# ---------------------------------------------------------------------------------------------- run


if __name__ == "__main__":  # the null server's process: python -m bench.grpcload PORT DIM
    uvloop.run(serve_null(int(sys.argv[1]), null_answer(int(sys.argv[2]))))
