"""One contract suite, two real Qdrant engines: Qdrant Edge in-process, and qdrant-client (local mode
standing in for a server)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from infra.errors import InvalidInput, NotFound
from infra.vector_index import IndexPoint, VectorIndex, physical_name, point_id
from infra.vector_index.edge import EdgeIndex
from infra.vector_index.server import ServerIndex

DIM = 16
Opener = Callable[[], VectorIndex]


def edge(root: Path) -> Opener:
    return lambda: EdgeIndex(root)


def server(root: Path) -> Opener:
    return lambda: ServerIndex(QdrantClient(path=str(root)))


@pytest.fixture(params=["edge", "qdrant-client"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    return edge(tmp_path) if request.param == "edge" else server(tmp_path)


@pytest.fixture()
def index(opener: Opener) -> Iterator[VectorIndex]:
    idx = opener()
    yield idx
    idx.close()


def points(n: int, seed: int = 0) -> list[IndexPoint]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, DIM))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    colours = ["red", "blue", "green"]
    return [
        IndexPoint(point_id(f"item-{i}"), vectors[i].tolist(), {"colour": colours[i % 3], "n": i}) for i in range(n)
    ]


class TestVectorIndexContract:
    def test_upsert_then_search_finds_each_vector_first(self, index: VectorIndex) -> None:
        index.create("c__m-v1", DIM, keyword_fields=["colour"])
        pts = points(60)
        index.upsert("c__m-v1", pts)
        assert index.count("c__m-v1") == 60
        for p in pts[:10]:
            hits = index.search("c__m-v1", p.vector, top_k=3)
            assert hits[0].id == p.id and hits[0].score == pytest.approx(1.0, abs=1e-4)
            assert hits[0].payload == p.payload
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)

    def test_upsert_is_idempotent_by_id(self, index: VectorIndex) -> None:
        index.create("c", DIM)
        index.upsert("c", points(20))
        index.upsert("c", points(20))
        assert index.count("c") == 20

    def test_filters_and_score_threshold_restrict_results(self, index: VectorIndex) -> None:
        index.create("c", DIM, keyword_fields=["colour"])
        pts = points(60)
        index.upsert("c", pts)
        hits = index.search("c", pts[0].vector, top_k=50, filter={"colour": "blue"})
        assert hits and all(h.payload["colour"] == "blue" for h in hits) and len(hits) == 20
        close = index.search("c", pts[0].vector, top_k=50, score_threshold=0.5)
        assert close and all(h.score >= 0.5 for h in close) and len(close) < 60

    def test_delete_removes_points(self, index: VectorIndex) -> None:
        index.create("c", DIM)
        pts = points(10)
        index.upsert("c", pts)
        index.delete("c", [pts[0].id, pts[1].id])
        assert index.count("c") == 8
        assert pts[0].id not in {h.id for h in index.search("c", pts[0].vector, top_k=10)}

    def test_scroll_returns_every_point_with_its_vector(self, index: VectorIndex) -> None:
        index.create("c", DIM)
        pts = points(25)
        index.upsert("c", pts)
        got = {p.id: p for p in index.scroll("c", batch=7)}
        assert set(got) == {p.id for p in pts}
        np.testing.assert_allclose(got[pts[3].id].vector, pts[3].vector, atol=1e-5)
        (one,) = index.get("c", [pts[4].id, point_id("absent")])
        assert one.id == pts[4].id and one.payload == pts[4].payload
        np.testing.assert_allclose(one.vector, pts[4].vector, atol=1e-5)

    def test_cursor_pages_visit_every_point_once_in_id_order(self, index: VectorIndex) -> None:
        index.create("c", DIM)
        pts = points(50)
        index.upsert("c", pts)
        seen: list[str] = []
        cursor, calls = None, 0
        while True:
            page, cursor = index.page("c", cursor, 16, with_vectors=False)
            calls += 1
            assert all(p.vector == [] for p in page) and all("n" in p.payload for p in page)
            seen += [p.id for p in page]
            if cursor is None:
                break
        assert calls == 4 and len(seen) == 50 and set(seen) == {p.id for p in pts}
        assert seen == sorted(seen, key=lambda i: uuid.UUID(i).int)  # one ordered pass, no page re-reads
        # ids only: the same pass, and which of some ids are there
        ids, cursor, pages = [], None, 0
        while True:
            page_ids, cursor = index.id_page("c", cursor, 16)
            ids, pages = ids + page_ids, pages + 1
            if cursor is None:
                break
        assert ids == seen and pages == 4
        absent = point_id("not stored")
        assert sorted(index.present("c", [seen[3], absent, seen[7]])) == sorted([seen[3], seen[7]])
        assert index.present("c", [absent]) == []

    def test_alias_switch_moves_readers_to_the_new_collection(self, index: VectorIndex) -> None:
        old, new = physical_name("photos", "clip", "1"), physical_name("photos", "clip", "2")
        index.create(old, DIM)
        index.create(new, DIM)
        index.upsert(old, points(5, seed=1))
        index.upsert(new, points(9, seed=2))
        assert index.resolve("photos") is None
        index.set_alias("photos", old)
        assert index.resolve("photos") == old
        index.set_alias("photos", new)
        assert index.resolve("photos") == new and index.count(index.resolve("photos") or "") == 9
        index.delete_alias("photos")
        assert index.resolve("photos") is None
        with pytest.raises(NotFound):
            index.set_alias("photos", "no-such-collection")

    def test_drop_and_unknown_collections(self, index: VectorIndex) -> None:
        index.create("c", DIM)
        with pytest.raises(InvalidInput):
            index.create("c", DIM)
        assert "c" in index.physical_collections()
        index.drop("c")
        assert not index.exists("c") and "c" not in index.physical_collections()
        with pytest.raises(NotFound):
            index.count("c")

    def test_reopening_after_a_restart_keeps_the_data_and_aliases(self, opener: Opener) -> None:
        first = opener()
        first.create("c__m-v1", DIM, keyword_fields=["colour"])
        pts = points(30)
        first.upsert("c__m-v1", pts)
        first.set_alias("c", "c__m-v1")
        first.close()
        again = opener()
        try:
            assert again.resolve("c") == "c__m-v1" and again.count("c__m-v1") == 30
            assert again.search("c__m-v1", pts[7].vector, top_k=1)[0].id == pts[7].id
            assert (
                again.search("c__m-v1", pts[7].vector, top_k=30, filter={"colour": "red"})[0].payload["colour"] == "red"
            )
        finally:
            again.close()


def test_physical_names_say_what_they_hold() -> None:
    assert physical_name("photos", "vlmops-clip", "3") == "photos__vlmops-clip-v3"
    with pytest.raises(InvalidInput):
        physical_name("Bad Name!", "m", "1")
    assert point_id("abc") == point_id("abc") != point_id("abd")
