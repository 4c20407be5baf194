"""Contract tests: the embedding service as a real ``bentoml serve`` process on a free port."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from infra.clients import EmbeddingClient
from infra.errors import InvalidInput, NotFound, PayloadTooLarge
from infra.images import encode_png, to_base64
from infra.process import ServiceProcess
from infra.toyworld import Domain, Split, ToyWorld, class_labels
from registry.families.clip import ClipModel
from registry.store import RegistryStore
from tests.conftest import make_settings
from tests.metrics import batched

pytestmark = pytest.mark.slow
MODEL = "vlmops-clip"
MAX_REQUEST_BYTES = 4_000_000


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embedding-home")


@pytest.fixture(scope="module")
def registry(home: Path, toy_clip: tuple[ClipModel, dict[str, float]]) -> RegistryStore:
    store = RegistryStore.from_settings(make_settings(home))
    model, metrics = toy_clip
    info = store.register(MODEL, model, metrics=metrics)
    store.promote(MODEL, info.version, reason="test")
    return store


def service_env(home: Path, **settings: object) -> dict[str, str]:
    """The test service's environment: its limits, plus ``VLMOPS_EMBEDDING__<KEY>`` for each setting."""
    env = {
        "VLMOPS_HOME": str(home),
        "VLMOPS_EMBEDDING__MAX_TEXT_CHARS": "500",
        "VLMOPS_EMBEDDING__MAX_IMAGE_PIXELS": "1000000",
    }
    return env | {f"VLMOPS_EMBEDDING__{key.upper()}": str(value) for key, value in settings.items()}


@pytest.fixture(scope="module")
def service(home: Path, registry: RegistryStore) -> Iterator[ServiceProcess]:
    env = service_env(home, refresh_interval_s=0.5, max_latency_ms=500, max_request_bytes=MAX_REQUEST_BYTES)
    with ServiceProcess("embedding", env=env, log_path=home / "service.log") as svc:
        yield svc


@pytest.fixture(scope="module")
def bentoml_path(home: Path, registry: RegistryStore) -> Iterator[ServiceProcess]:
    """The same service with the fast path off: every request through BentoML's own stack."""
    env = service_env(home, fast_path="false")
    with ServiceProcess("embedding", env=env, log_path=home / "service-bentoml-path.log") as svc:
        yield svc


@pytest.fixture(scope="module")
def client(service: ServiceProcess) -> Iterator[EmbeddingClient]:
    c = EmbeddingClient(service.url)
    yield c
    c.close()


def png(sample_image: object) -> bytes:
    return encode_png(sample_image)  # type: ignore[arg-type]


class TestEmbeddings:
    def test_vectors_have_the_model_dimension_and_unit_norm(self, client: EmbeddingClient) -> None:
        texts = client.embed_text(["a red circle", "a blue star"])
        images = client.embed_image([png(s.image) for s in ToyWorld().samples(3, Split.TEST)])
        for emb in (texts, images):
            assert emb.vectors.shape[1] == 96
            assert np.allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-4)
            assert emb.model == MODEL and set(emb.versions) == {"1"}

    def test_matching_caption_ranks_first(self, client: EmbeddingClient) -> None:
        world = ToyWorld()
        samples = [world.sample(i, Split.TEST, n_objects=1) for i in range(200)]
        one_per_class = list({s.label: s for s in samples}.values())
        assert len(one_per_class) == 24
        img = client.embed_image([png(s.image) for s in one_per_class]).vectors
        txt = client.embed_text([s.caption for s in one_per_class]).vectors
        ranks_first = (img @ txt.T).argmax(axis=1) == np.arange(len(one_per_class))
        assert ranks_first.mean() >= 0.9

    def test_classify_is_accurate_on_held_out_images(self, client: EmbeddingClient) -> None:
        held_out = list(ToyWorld().samples(240, Split.TEST, Domain.PLAIN, n_objects=1, start=1000))
        results = []
        for start in range(0, 240, 60):
            chunk = held_out[start : start + 60]
            results += client.classify([png(s.image) for s in chunk], class_labels())
        acc = np.mean([r["top_label"] == s.label for r, s in zip(results, held_out, strict=True)])
        assert acc >= 0.9
        r = results[0]
        assert (
            len(r["probs"]) == 24 and abs(sum(r["probs"]) - 1) < 1e-4 and r["probs"] == sorted(r["probs"], reverse=True)
        )

    def test_prompt_templates_change_the_result(self, client: EmbeddingClient) -> None:
        image = png(ToyWorld().sample(0, Split.TEST, n_objects=1).image)
        labels = ["a red circle", "a blue square"]
        default = client.classify([image], labels)[0]["probs"]
        custom = client.classify([image], labels, templates=["{}"])[0]["probs"]
        assert default != custom

    def test_base64_vectors_equal_the_json_ones(self, client: EmbeddingClient) -> None:
        image = to_base64(png(ToyWorld().sample(3, Split.TEST).image))
        for route, item in (("/embed_text", {"text": "a red circle"}), ("/embed_image", {"image": image})):
            as_json, as_b64 = client.post(route, {"items": [item, {**item, "encoding": "base64"}]})
            assert as_b64["vector"] is None and as_json["vector_b64"] is None
            decoded = np.frombuffer(base64.b64decode(as_b64["vector_b64"]), dtype="<f4")
            assert decoded.shape == (as_b64["dim"],) == (96,)
            np.testing.assert_allclose(decoded, np.asarray(as_json["vector"], dtype=np.float32), atol=1e-7)

    def test_text_over_the_context_is_truncated_and_said_so(self, client: EmbeddingClient) -> None:
        emb = client.embed_text([" ".join(["red"] * 60), "a red circle"])
        assert emb.truncated == [True, False]


class TestBadInput:
    def test_each_bad_input_gets_its_4xx_and_the_service_keeps_serving(
        self, client: EmbeddingClient, service: ServiceProcess
    ) -> None:
        before = client.embed_text(["a green triangle"]).vectors
        bomb = encode_png(__import__("PIL.Image", fromlist=["Image"]).new("RGB", (2000, 2000)))
        cases = [
            (lambda: client.embed_image([b"this is not an image"]), InvalidInput, "decoded"),
            (
                lambda: client.embed_image([png(ToyWorld().sample(0).image)[:60]]),
                InvalidInput,
                "corrupt|truncated|decod",
            ),
            (lambda: client.post("/embed_image", {"items": [{"image": "@@not-base64@@"}]}), InvalidInput, "base64"),
            (lambda: client.embed_image([bomb]), PayloadTooLarge, "pixels"),
            (lambda: client.embed_text([]), InvalidInput, "at least 1 item"),
            (lambda: client.embed_text(["   "]), InvalidInput, "text is empty"),
            (lambda: client.embed_text(["x" * 501]), InvalidInput, "over the limit of 500"),
            (lambda: client.embed_text(["a red circle"], model_version="99"), NotFound, "no version '99'"),
            (lambda: client.embed_text(["a red circle"], model_version="latest"), NotFound, "positive integer"),
            (lambda: client.classify([png(ToyWorld().sample(0).image)], ["only one"]), InvalidInput, "at least 2"),
            (lambda: client.classify([png(ToyWorld().sample(0).image)], ["a", "b"], ["no slot"]), InvalidInput, "{}"),
        ]
        for call, error, message in cases:
            with pytest.raises(error, match=message):
                call()
        resp = httpx.post(
            f"{service.url}/embed_text", content=b"\x00\x01garbage", headers={"content-type": "text/plain"}
        )
        assert 400 <= resp.status_code < 500
        after = client.embed_text(["a green triangle"]).vectors
        np.testing.assert_allclose(before, after, atol=1e-6)

    def test_a_bad_request_does_not_fail_the_batch_it_would_join(self, client: EmbeddingClient) -> None:
        good = [png(s.image) for s in ToyWorld().samples(8, Split.TEST)]

        def call(i: int) -> str:
            try:
                if i % 2:
                    client.embed_image([b"garbage"])
                    return "no error"
                return f"ok {client.embed_image([good[i % 8]]).vectors.shape[1]}"
            except InvalidInput:
                return "400"

        with ThreadPoolExecutor(16) as pool:
            out = list(pool.map(call, range(16)))
        assert out == ["ok 96", "400"] * 8


class TestFastPath:
    """The item APIs are served by ``services.fastpath`` in front of BentoML's stack: the same answers,
    statuses and messages as BentoML's own path gives, request for request."""

    def requests(self) -> list[tuple[str, object]]:
        image = to_base64(png(ToyWorld().sample(2, Split.TEST).image))
        return [
            ("/embed_text", {"items": [{"text": "a red circle"}, {"text": "a blue star", "encoding": "base64"}]}),
            ("/embed_image", {"items": [{"image": image}]}),
            ("/classify", {"items": [{"image": image, "labels": ["a red circle", "a blue star"]}]}),
            ("/embed_text", {"items": []}),
            ("/embed_text", {"items": [{"text": "  "}]}),
            ("/embed_text", {"items": [{"text": "x" * 501}]}),
            ("/embed_text", {"items": [{"text": "a red circle", "model_version": "99"}]}),
            ("/embed_text", {"items": "a red circle"}),
            ("/embed_text", {"texts": ["a red circle"]}),
            ("/embed_text", b'{"items": [{"text": '),
            ("/embed_image", {"items": [{"image": "@@not-base64@@"}]}),
            ("/embed_image", {"items": [{"image": to_base64(b"this is not an image")}]}),
            ("/classify", {"items": [{"image": image, "labels": ["only one"]}]}),
        ]

    def test_answers_statuses_and_messages_equal_bentomls(
        self, service: ServiceProcess, bentoml_path: ServiceProcess
    ) -> None:
        for route, payload in self.requests():
            content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            headers = {"content-type": "application/json"}
            fast = httpx.post(service.url + route, content=content, headers=headers, timeout=60)
            slow = httpx.post(bentoml_path.url + route, content=content, headers=headers, timeout=60)
            assert fast.status_code == slow.status_code, (route, payload, fast.text, slow.text)
            if fast.status_code == 200:
                for a, b in zip(fast.json(), slow.json(), strict=True):
                    if a.get("vector") is not None:
                        np.testing.assert_allclose(a.pop("vector"), b.pop("vector"), atol=1e-6)
                    if a.get("probs") is not None:
                        np.testing.assert_allclose(a.pop("probs"), b.pop("probs"), atol=1e-6)
                    if a.get("vector_b64") is not None:
                        fa, fb = (np.frombuffer(base64.b64decode(x.pop("vector_b64")), "<f4") for x in (a, b))
                        np.testing.assert_allclose(fa, fb, atol=1e-6)
                    assert a == b
            else:
                assert 400 <= fast.status_code < 500
                assert fast.json() == slow.json(), route

    def test_a_body_over_the_limit_gets_413_and_the_service_keeps_serving(
        self, client: EmbeddingClient, service: ServiceProcess
    ) -> None:
        text = "a red circle " * 30
        body = json.dumps({"items": [{"text": text[:400]}] * (MAX_REQUEST_BYTES // 400 + 1)}).encode()
        resp = httpx.post(f"{service.url}/embed_text", content=body, headers={"content-type": "application/json"})
        assert resp.status_code == 413
        assert f"over the limit of {MAX_REQUEST_BYTES} bytes" in resp.json()[0]["error"]
        assert client.embed_text(["a red circle"]).vectors.shape == (1, 96)

    def test_requests_are_counted_by_route_and_status(self, client: EmbeddingClient, service: ServiceProcess) -> None:
        def count(status: str) -> float:
            text = httpx.get(f"{service.url}/metrics").text
            return sum(
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "vlmops_http_requests_total"
                and sample.labels == {"route": "/embed_text", "status": status}
            )

        ok, bad = count("200"), count("400")
        for _ in range(3):
            client.embed_text(["a red circle"])
        with pytest.raises(InvalidInput):
            client.embed_text([" "])
        deadline = time.monotonic() + 10  # the multiprocess registry is written asynchronously
        while (count("200") - ok, count("400") - bad) != (3, 1):
            assert time.monotonic() < deadline, (count("200") - ok, count("400") - bad)
            time.sleep(0.3)


class TestBatchingAndVersions:
    def test_concurrent_single_item_requests_are_batched(
        self, client: EmbeddingClient, service: ServiceProcess
    ) -> None:
        texts = [f"a {c} {s}" for c in ("red", "blue", "green", "yellow") for s in ("circle", "star", "square")]
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda t: client.embed_text([t]).vectors[0], texts * 3))
        assert len(results) == 36
        assert batched(service.url, "embed_text"), "every batch held one item"
        deadline = time.monotonic() + 10  # the counter lands in the multiprocess registry asynchronously
        while "vlmops_embedding_items_total" not in (metrics := httpx.get(f"{service.url}/metrics").text):
            assert time.monotonic() < deadline, "vlmops_embedding_items_total is not exported"
            time.sleep(0.5)
        # the time in the model per batch is exported too, and some time was spent there
        sums = [line for line in metrics.splitlines() if line.startswith("vlmops_embedding_model_seconds_sum")]
        assert sums and sum(float(line.split()[-1]) for line in sums) > 0

    def test_pinned_version_promotion_and_rollback_without_restart(
        self, client: EmbeddingClient, registry: RegistryStore
    ) -> None:
        other = ClipModel.from_pretrained("vlmops-toy-clip", seed=7)  # a different model: random weights
        v2 = registry.register(MODEL, other).version
        text = ["a yellow square"]
        v1_vec = client.embed_text(text).vectors
        pinned = client.embed_text(text, model_version=v2)
        assert pinned.versions == [v2]
        assert not np.allclose(pinned.vectors, v1_vec, atol=1e-3)
        np.testing.assert_allclose(pinned.vectors[0], other.encode_text(text)[0][0].numpy(), atol=1e-5)
        image = ToyWorld().sample(5, Split.TEST).image
        pinned_image = client.embed_image([png(image)], model_version=v2)
        assert pinned_image.versions == [v2]
        np.testing.assert_allclose(pinned_image.vectors[0], other.encode_images([image])[0].numpy(), atol=1e-5)

        failures: list[str] = []
        seen: list[str] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                try:
                    seen.append(client.embed_text(text).versions[0])
                except Exception as exc:  # noqa: BLE001 - any failure is what this test counts
                    failures.append(repr(exc))

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            registry.promote(MODEL, v2, reason="test promotion")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (not seen or seen[-1] != v2):
                time.sleep(0.1)
            registry.rollback(MODEL, reason="test rollback")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and seen[-1] != "1":
                time.sleep(0.1)
        finally:
            stop.set()
            thread.join()
        assert failures == []
        assert v2 in seen and seen[-1] == "1"
        np.testing.assert_allclose(client.embed_text(text).vectors, v1_vec, atol=1e-6)
        assert set(client.models()["loaded"]) >= {"1", v2}


def test_ready_only_once_a_production_model_is_loaded(tmp_path: Path, random_clip: ClipModel) -> None:
    home = tmp_path / "home"
    env = {"VLMOPS_HOME": str(home), "VLMOPS_EMBEDDING__REFRESH_INTERVAL_S": "0.5"}
    svc = ServiceProcess("embedding", env=env, log_path=tmp_path / "service.log")
    svc.launch()
    try:
        svc.wait_live()
        time.sleep(1.5)  # a few refresh intervals: still nothing to serve
        assert httpx.get(f"{svc.url}/readyz").status_code == 503
        store = RegistryStore.from_settings(make_settings(home))
        store.promote(MODEL, store.register(MODEL, random_clip).version)
        svc.wait_ready()
        emb = EmbeddingClient(svc.url).embed_text(["a red circle"])
        assert emb.versions == ["1"]
        np.testing.assert_allclose(emb.vectors[0], random_clip.encode_text(["a red circle"])[0][0].numpy(), atol=1e-5)
    finally:
        svc.stop()
