"""A flood on loopback against one embedding worker: the cap on requests in flight answers 429 with
Retry-After, nothing but deliberate shedding is a 5xx, memory stays bounded, and it serves on."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator

import httpx
import numpy as np
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.loadgen import load
from infra.process import ServiceProcess
from registry.families.clip import ClipModel
from registry.store import RegistryStore
from tests.conftest import make_settings

pytestmark = pytest.mark.slow
CLIENTS = 200
SECONDS = 20.0
MAX_CONCURRENCY = 32
RSS_GROWTH_BOUND = 512 * 2**20  # what the flood may add to the worker's resident memory
BODY = {"items": [{"text": "a red circle on a blue square"}]}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    home = tmp_path_factory.mktemp("flood")
    store = RegistryStore.from_settings(make_settings(home))
    store.promote("vlmops-clip", store.register("vlmops-clip", ClipModel.from_pretrained("vlmops-toy-clip")).version)
    env = {"VLMOPS_HOME": str(home), "VLMOPS_EMBEDDING__MAX_CONCURRENCY": str(MAX_CONCURRENCY)}
    with ServiceProcess("embedding", env=env, log_path=home / "service.log") as svc:
        yield svc


def tree_rss(pid: int) -> int:
    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def probe(url: str, done: threading.Event, retry_after: set[str]) -> None:
    """Beside the flood: the Retry-After of the 429s a plain client gets."""
    with httpx.Client(base_url=url, timeout=60) as http:
        while not done.wait(0.05):
            resp = http.post("/embed_text", json=BODY)
            if resp.status_code == 429:
                retry_after.add(resp.headers.get("retry-after", ""))


def embed_ok(url: str) -> float:
    resp = httpx.post(f"{url}/embed_text", json={"items": [{"text": "a red circle"}]}, timeout=30)
    assert resp.status_code == 200, resp.text
    return float(np.linalg.norm(np.asarray(resp.json()[0]["vector"], dtype=np.float32)))


def test_a_flood_gets_429s_and_the_service_serves_on(service: ServiceProcess) -> None:
    assert service.proc is not None
    assert abs(embed_ok(service.url) - 1.0) < 1e-4
    baseline = tree_rss(service.proc.pid)
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            peak[0] = max(peak[0], tree_rss(service.proc.pid))  # type: ignore[union-attr]

    retry_after: set[str] = set()
    helpers = [
        threading.Thread(target=sample, daemon=True),
        threading.Thread(target=probe, args=(service.url, done, retry_after), daemon=True),
    ]
    for t in helpers:
        t.start()
    try:  # closed-loop clients that send again the moment they are answered, 429 or not
        out = load(service.url, "/embed_text", [BODY], clients=CLIENTS, seconds=SECONDS)
    finally:
        done.set()
        for t in helpers:
            t.join()
    statuses = Counter({200: out["requests"], **{int(k): v for k, v in out["error_statuses"].items()}})
    print(f"flood statuses {dict(statuses)}, rss {baseline / 2**20:.0f} -> peak {peak[0] / 2**20:.0f} MiB")
    assert statuses[200] > 0 and statuses[429] > 0
    assert retry_after == {"1"}
    assert set(statuses) <= {200, 429, 503}, statuses  # 503: a request shed after max_latency_ms, on purpose
    assert peak[0] - baseline < RSS_GROWTH_BOUND
    assert abs(embed_ok(service.url) - 1.0) < 1e-4  # and it answers normally afterwards
    assert httpx.get(f"{service.url}/readyz", timeout=10).status_code == 200
    metrics = httpx.get(f"{service.url}/metrics", timeout=10).text
    rejected = sum(
        s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "vlmops_http_rejected_total" and s.labels.get("status") == "429"
    )
    assert rejected >= statuses[429]  # the probe's 429s too
