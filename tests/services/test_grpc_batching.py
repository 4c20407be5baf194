"""gRPC and HTTP on one batcher, in a real embedding service whose model is kept busy by one long HTTP
request (sized to keep this machine's model busy for seconds, run back to back): items of both protocols
queue behind it and run as one batch; a deadline that passes in the queue never reaches the model; the
shared cap on requests in flight gives RESOURCE_EXHAUSTED. And health follows the registry: NOT_SERVING
until a production version is loaded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from infra.images import encode_png, to_base64
from infra.process import ServiceProcess
from infra.toyworld import Split, ToyWorld
from registry.families.clip import ClipModel
from registry.store import RegistryStore
from services.proto.vlmops.v1 import embedding_pb2 as pb
from services.proto.vlmops.v1 import embedding_pb2_grpc
from tests.conftest import make_settings
from tests.metrics import samples

pytestmark = pytest.mark.slow
MODEL = "vlmops-clip"
BUSY_S = 4.0  # how long the long request should take: every deadline below is a fraction of a second
PROBE = 1024  # images in the request that measures this machine's speed
MOST = 32768  # images in the long request at most
CAP = 12  # requests in flight per worker, HTTP and gRPC together


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory, toy_clip: tuple[ClipModel, dict[str, float]]) -> Iterator[Any]:
    home = tmp_path_factory.mktemp("grpc-busy")
    store = RegistryStore.from_settings(make_settings(home))
    store.promote(MODEL, store.register(MODEL, toy_clip[0]).version)
    env = {
        "VLMOPS_HOME": str(home),
        "VLMOPS_EMBEDDING__MAX_ITEMS": str(MOST),
        "VLMOPS_EMBEDDING__MAX_CONCURRENCY": str(CAP),
        "VLMOPS_EMBEDDING__MAX_LATENCY_MS": "60000",
        "VLMOPS_EMBEDDING__MAX_WAIT_MS": "0",
    }
    with ServiceProcess("embedding", env=env, log_path=home / "service.log") as svc:
        yield svc


@pytest.fixture(scope="module")
def long_body(busy: ServiceProcess) -> dict[str, Any]:
    """A request that keeps the model busy for about ``BUSY_S`` on this machine (the toy model embeds
    thousands of images a second, so a fixed count would be over before a short deadline could pass)."""
    images = [to_base64(encode_png(s.image)) for s in ToyWorld().samples(64, Split.TEST)]

    def body(n: int) -> dict[str, Any]:
        return {"items": [{"image": images[i % 64]} for i in range(n)]}

    httpx.post(f"{busy.url}/embed_image", json=body(64), timeout=300).raise_for_status()  # warm
    started = time.perf_counter()
    httpx.post(f"{busy.url}/embed_image", json=body(PROBE), timeout=300).raise_for_status()
    per_item = (time.perf_counter() - started) / PROBE
    return body(min(MOST, max(PROBE, int(BUSY_S / per_item))))


def while_busy(svc: ServiceProcess, body: dict[str, Any], during: Callable[[], Any]) -> Any:
    """``during()`` once the model runs the long request (sent first; ``vlmops_model_busy`` says when its
    images are decoded and in the model); returns what ``during`` returned, once the long request is answered."""
    answer: list[httpx.Response] = []
    url = f"{svc.url}/embed_image"
    thread = threading.Thread(target=lambda: answer.append(httpx.post(url, json=body, timeout=300)))
    thread.start()
    deadline = time.monotonic() + 120
    while samples(svc.url, "vlmops_model_busy", operation="embed_image") < 1:
        assert time.monotonic() < deadline and thread.is_alive(), "the long request never reached the model"
        time.sleep(0.05)
    try:
        return during()
    finally:
        thread.join()
        assert answer and answer[0].status_code == 200 and len(answer[0].json()) == len(body["items"])


def batches(url: str, operation: str) -> tuple[float, float]:
    """(batches run, items in them) of ``operation`` so far."""
    return (
        samples(url, "vlmops_batch_size_count", operation=operation),
        samples(url, "vlmops_batch_size_sum", operation=operation),
    )


def test_grpc_and_http_items_share_one_batch(busy: ServiceProcess, long_body: dict[str, Any]) -> None:
    texts = [f"a red circle {i}" for i in range(8)]
    before = batches(busy.url, "embed_text")

    def one(i: int) -> np.ndarray:
        if i % 2:  # odd texts over HTTP, even ones over gRPC, all at once
            row = httpx.post(f"{busy.url}/embed_text", json={"items": [{"text": texts[i]}]}, timeout=120).json()[0]
            return np.asarray(row["vector"], dtype=np.float32)
        with grpc.insecure_channel(busy.grpc_target) as channel:
            out = embedding_pb2_grpc.EmbeddingStub(channel).EmbedText(
                pb.EmbedTextRequest(items=[pb.TextItem(text=texts[i])]), timeout=120
            )
            return np.asarray(out.embeddings[0].vector, dtype=np.float32)

    vectors = while_busy(busy, long_body, lambda: list(ThreadPoolExecutor(8).map(one, range(8))))
    count, size = batches(busy.url, "embed_text")
    assert (count - before[0], size - before[1]) == (1, 8)  # one batch held all eight
    with grpc.insecure_channel(busy.grpc_target) as channel:  # and each got its own text's vector
        alone = embedding_pb2_grpc.EmbeddingStub(channel).EmbedText(
            pb.EmbedTextRequest(items=[pb.TextItem(text=t) for t in texts]), timeout=60
        )
    expected = np.asarray([e.vector for e in alone.embeddings], dtype=np.float32)
    assert np.abs(np.stack(vectors) - expected).max() < 1e-5


def test_a_deadline_that_passes_in_the_queue_never_reaches_the_model(
    busy: ServiceProcess, long_body: dict[str, Any]
) -> None:
    with grpc.insecure_channel(busy.grpc_target) as channel:
        stub = embedding_pb2_grpc.EmbeddingStub(channel)
        stub.EmbedText(pb.EmbedTextRequest(items=[pb.TextItem(text="connected")]), timeout=30)
        embedded = samples(busy.url, "vlmops_embedding_items_total", operation="embed_text")
        ended = sum(
            samples(busy.url, "vlmops_grpc_requests_total", method="EmbedText", code=code)
            for code in ("DEADLINE_EXCEEDED", "CANCELLED")
        )

        def late() -> grpc.RpcError:
            with pytest.raises(grpc.RpcError) as caught:
                stub.EmbedText(pb.EmbedTextRequest(items=[pb.TextItem(text="too late")]), timeout=0.2)
            return caught.value

        error = while_busy(busy, long_body, late)
    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.5)
    # the server took the call in and ended it (the batcher at its deadline, or grpc's cancellation) ...
    ended_now = sum(
        samples(busy.url, "vlmops_grpc_requests_total", method="EmbedText", code=code)
        for code in ("DEADLINE_EXCEEDED", "CANCELLED")
    )
    assert ended_now == ended + 1
    # ... and its item never reached the model
    assert samples(busy.url, "vlmops_embedding_items_total", operation="embed_text") == embedded


def test_over_the_cap_in_flight_calls_get_resource_exhausted(busy: ServiceProcess, long_body: dict[str, Any]) -> None:
    def call(i: int) -> grpc.StatusCode:
        with grpc.insecure_channel(busy.grpc_target) as channel:
            try:
                embedding_pb2_grpc.EmbeddingStub(channel).EmbedText(
                    pb.EmbedTextRequest(items=[pb.TextItem(text=f"queued {i}")]), timeout=120
                )
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "in flight" in exc.details()
                return exc.code()
            return grpc.StatusCode.OK

    codes = while_busy(busy, long_body, lambda: list(ThreadPoolExecutor(24).map(call, range(24))))
    ok = codes.count(grpc.StatusCode.OK)
    assert ok <= CAP - 1  # the long HTTP request holds one place of the cap
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 24 - (CAP - 1)
    with grpc.insecure_channel(busy.grpc_target) as channel:  # and the service serves on
        out = embedding_pb2_grpc.EmbeddingStub(channel).EmbedText(pb.EmbedTextRequest(items=[pb.TextItem(text="a")]))
    assert len(out.embeddings[0].vector) == 96


def test_health_is_not_serving_until_a_production_version_is_loaded(
    tmp_path: Path, toy_clip: tuple[ClipModel, dict[str, float]]
) -> None:
    env = {"VLMOPS_HOME": str(tmp_path), "VLMOPS_EMBEDDING__REFRESH_INTERVAL_S": "0.5"}
    RegistryStore.from_settings(make_settings(tmp_path))  # an empty registry
    svc = ServiceProcess("embedding", env=env, log_path=tmp_path / "service.log")
    svc.launch()
    try:
        svc.wait_live()
        with grpc.insecure_channel(svc.grpc_target) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            check = health_pb2_grpc.HealthStub(channel).Check
            request = health_pb2.HealthCheckRequest(service="vlmops.v1.Embedding")
            assert check(request).status == health_pb2.HealthCheckResponse.NOT_SERVING
            stub = embedding_pb2_grpc.EmbeddingStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.EmbedText(pb.EmbedTextRequest(items=[pb.TextItem(text="a")]), timeout=30)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE

            watch = health_pb2_grpc.HealthStub(channel).Watch(request, timeout=120)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            store = RegistryStore.from_settings(make_settings(tmp_path))
            store.promote(MODEL, store.register(MODEL, toy_clip[0]).version)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING  # pushed, not polled by the client
            watch.cancel()
            assert check(request).status == health_pb2.HealthCheckResponse.SERVING
            out = stub.EmbedText(pb.EmbedTextRequest(items=[pb.TextItem(text="a")]), timeout=30)
            assert out.embeddings[0].model.version == "1"
    finally:
        svc.stop()
