"""Search and embedding services as real processes over one VLMOPS_HOME (Qdrant Edge, local blobs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.images import encode_png, to_base64
from infra.toyworld import Split, ToySample, ToyWorld, class_labels
from registry.families.clip import ClipModel
from tests.conftest import search_stack

pytestmark = pytest.mark.slow
MODEL = "vlmops-clip"


@pytest.fixture(scope="module")
def urls(tmp_path_factory: pytest.TempPathFactory, toy_clip: tuple[ClipModel, dict[str, float]]) -> Iterator[str]:
    with search_stack(tmp_path_factory.mktemp("search-home"), toy_clip[0], MODEL) as (_, _, search_url):
        yield search_url


def call(url: str, route: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{url}{route}", json=body, timeout=120)


def ok(resp: httpx.Response) -> Any:
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.fixture(scope="module")
def toys(urls: str) -> list[ToySample]:
    samples = list(ToyWorld().samples(240, Split.TEST, n_objects=1, start=5000))
    ok(call(urls, "/collections/create", name="toys", keyword_fields=["colour", "shape"]))
    for start in range(0, len(samples), 60):
        items = [
            {"image": to_base64(encode_png(s.image)), "payload": {"label": s.label, **_fields(s)}}
            for s in samples[start : start + 60]
        ]
        ok(call(urls, "/ingest", collection="toys", items=items))
    return samples


def _fields(s: ToySample) -> dict[str, str]:
    return {"colour": s.objects[0].colour, "shape": s.objects[0].shape}


class TestSearch:
    def test_text_queries_reach_precision_at_10(self, urls: str, toys: list[ToySample]) -> None:
        precisions = []
        for label in class_labels():
            hits = ok(call(urls, "/search", collection="toys", text=label, top_k=10))
            assert len(hits) == 10 and {h["version"] for h in hits} == {"1"} and hits[0]["model"] == MODEL
            precisions.append(sum(h["payload"]["label"] == label for h in hits) / 10)
        assert sum(precisions) / len(precisions) >= 0.9, precisions

    def test_image_query_returns_the_image_first_and_more_like_this(self, urls: str, toys: list[ToySample]) -> None:
        s = toys[17]
        hits = ok(call(urls, "/search", collection="toys", image=to_base64(encode_png(s.image)), top_k=5))
        assert hits[0]["payload"]["label"] == s.label and hits[0]["score"] > 0.999
        assert hits[0]["blob_uri"].startswith("file://") and Path(hits[0]["blob_uri"][7:]).is_file()
        again = ok(call(urls, "/search", collection="toys", item_id=hits[0]["id"], top_k=5))
        assert again[0]["id"] == hits[0]["id"]

    def test_filters_and_threshold_restrict_results(self, urls: str, toys: list[ToySample]) -> None:
        hits = ok(call(urls, "/search", collection="toys", text="a red circle", top_k=50, filter={"shape": "star"}))
        assert hits and all(h["payload"]["shape"] == "star" for h in hits)
        strict = ok(call(urls, "/search", collection="toys", text="a red circle", top_k=50, score_threshold=0.99))
        assert all(h["score"] >= 0.99 for h in strict) and len(strict) < 50

    def test_ingest_is_idempotent_by_content(self, urls: str, toys: list[ToySample]) -> None:
        before = ok(call(urls, "/collections/list"))[0]["count"]
        item = {"image": to_base64(encode_png(toys[0].image)), "payload": {"label": toys[0].label}}
        out = ok(call(urls, "/ingest", collection="toys", items=[item]))
        assert out["count"] == before == 240


class TestBadInput:
    def test_unknown_collection_is_404(self, urls: str, toys: list[ToySample]) -> None:
        assert call(urls, "/search", collection="nope", text="a red circle").status_code == 404
        item = {"image": to_base64(encode_png(toys[0].image))}
        assert call(urls, "/ingest", collection="nope", items=[item]).status_code == 404

    def test_a_corrupt_upload_stores_nothing(self, urls: str, toys: list[ToySample]) -> None:
        good = {"image": to_base64(encode_png(ToyWorld().sample(99_999, Split.VAL).image))}
        resp = call(urls, "/ingest", collection="toys", items=[good, {"image": to_base64(b"not an image")}])
        assert resp.status_code == 400 and "item 1" in resp.text
        assert ok(call(urls, "/collections/list"))[0]["count"] == 240
        assert call(urls, "/search", collection="toys", text="  ").status_code == 400
        assert call(urls, "/search", collection="toys", text="a", image="aGk=").status_code == 400

    def test_deleted_collection_fails_cleanly(self, urls: str, toys: list[ToySample]) -> None:
        ok(call(urls, "/collections/create", name="scratch"))
        ok(call(urls, "/ingest", collection="scratch", items=[{"image": to_base64(encode_png(toys[1].image))}]))
        ok(call(urls, "/collections/delete", name="scratch"))
        assert call(urls, "/search", collection="scratch", text="a red circle").status_code == 404
        assert [c["name"] for c in ok(call(urls, "/collections/list"))] == ["toys"]
        assert ok(call(urls, "/search", collection="toys", text="a red circle", top_k=3))  # still serving
