"""The catalog over both index backends: a search racing a delete fails cleanly, and replaced
collections are dropped by the janitor once their grace period is over."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from infra.blobs import BlobStore
from infra.catalog import Catalog, Janitor
from infra.catalog_db import CatalogDB
from infra.errors import InvalidInput, NotBuilt, NotFound
from infra.vector_index import IndexPoint, VectorIndex
from infra.vector_index.edge import EdgeIndex
from infra.vector_index.server import ServerIndex

DIM = 8


def vectors_for(images: Sequence[bytes], version: str) -> np.ndarray:
    """Deterministic unit vectors per (image, version): a stand-in for the embedding service."""
    rows = []
    for data in images:
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(data + version.encode()).digest()[:4], "little"))
        v = rng.normal(size=DIM)
        rows.append(v / np.linalg.norm(v))
    return np.asarray(rows, dtype=np.float32)


@pytest.fixture(params=["edge", "qdrant-client"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Catalog:
    index: VectorIndex = (
        EdgeIndex(tmp_path / "edge") if request.param == "edge" else ServerIndex(QdrantClient(path=str(tmp_path / "q")))
    )
    cat = Catalog(CatalogDB(f"sqlite:///{tmp_path / 'catalog.db'}"), index, BlobStore(str(tmp_path / "blobs")))
    cat.create("toys", "m", "1", DIM)
    cat.ingest("toys", [b"a", b"b", b"c"], [{"n": 1}, {"n": 2}, {"n": 3}], vectors_for)
    return cat


def test_a_search_racing_a_delete_fails_cleanly(catalog: Catalog) -> None:
    def embed_then_delete(version: str) -> np.ndarray:
        catalog.delete("toys")  # the delete lands between resolving the alias and searching the index
        return vectors_for([b"a"], version)[0]

    with pytest.raises(NotFound, match="'toys' was deleted while it was being searched"):
        catalog.search("toys", embed_then_delete)
    with pytest.raises(NotFound, match="no collection 'toys'"):
        catalog.search("toys", lambda v: vectors_for([b"a"], v)[0])
    # the catalog is unharmed: the name can be used again
    catalog.create("toys", "m", "1", DIM)
    catalog.ingest("toys", [b"z"], [{"n": 9}], vectors_for)
    assert catalog.count("toys") == 1


def test_replaced_collections_are_dropped_after_the_grace_period(catalog: Catalog) -> None:
    old = catalog.info("toys").physical
    build = catalog.start_build("toys", "2")
    items, cursor = catalog.items("toys", None, 100)
    assert cursor is None and len(items) == 3
    blobs = [catalog.blobs.get(p.payload["blob"]) for p in items]
    vecs = vectors_for(blobs, "2")
    catalog.write_build(
        "toys", build["physical"], [IndexPoint(p.id, v.tolist(), p.payload) for p, v in zip(items, vecs, strict=True)]
    )
    catalog.finish_build("toys", build["physical"])
    assert catalog.info("toys").version == "2" and catalog.index.exists(old)  # kept for searches in flight
    janitor = Janitor(catalog, grace_s=1.0, interval_s=0.1).start()
    try:
        assert catalog.index.exists(old)
        deadline = time.monotonic() + 10
        while catalog.index.exists(old):
            assert time.monotonic() < deadline, "the retired collection was never dropped"
            time.sleep(0.05)
    finally:
        janitor.stop()
    hits = catalog.search("toys", lambda v: vectors_for([b"b"], v)[0], top_k=1)
    assert hits[0].version == "2" and hits[0].payload == {"n": 2} and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert catalog.count("toys") == 3


def test_a_bulk_page_is_written_only_with_every_target_versions_vectors(catalog: Catalog) -> None:
    """The bulk ingest protocol: vectors a job made are written only when they cover every version the
    collection is embedded by at that moment; a build that started meanwhile is named, nothing written."""
    images = [b"d", b"e"]
    keys = [catalog.blobs.put(data) for data in images]
    payloads: list[dict[str, object]] = [{"n": 4}, {"n": 5}]
    ids = [p.id for p in catalog.items("toys", None, 100)[0]]
    assert sorted(catalog.known("toys", [*ids, "not-an-id", *(str(i) for i in range(2))])) == sorted(ids)
    assert catalog.targets("toys") == ["1"]
    build = catalog.start_build("toys", "2")
    assert catalog.targets("toys") == ["1", "2"]
    # embedded before the build started: only version 1's vectors, refused whole
    assert catalog.ingest_embedded("toys", keys, payloads, {"1": vectors_for(images, "1")}) == ([], ["2"])
    assert catalog.count("toys") == 3 and catalog.index.count(build["physical"]) == 0
    written, missing = catalog.ingest_embedded("toys", keys, payloads, {v: vectors_for(images, v) for v in ("1", "2")})
    assert missing == [] and catalog.known("toys", written) == written and len(written) == 2
    for physical, version in ((catalog.info("toys").physical, "1"), (build["physical"], "2")):
        stored = {p.id: np.asarray(p.vector) for p in catalog.index.get(physical, written)}
        expected = vectors_for(images, version)
        assert all(np.allclose(stored[i], expected[n], atol=1e-6) for n, i in enumerate(written))
    with pytest.raises(InvalidInput, match="not in the blob store"):
        catalog.ingest_embedded("toys", ["0" * 64], [{}], {v: vectors_for([b"x"], v) for v in ("1", "2")})
    with pytest.raises(InvalidInput, match="not 2 rows of 8"):
        catalog.ingest_embedded("toys", keys, payloads, {"1": vectors_for(images[:1], "1")})


def test_a_shadow_build_is_searched_by_its_version_kept_current_and_dropped(catalog: Catalog) -> None:
    """A build left open (a shadow) answers searches by its version beside the live collection, receives new
    ingests like any build, and goes when dropped; the live collection is untouched throughout."""
    with pytest.raises(NotBuilt, match="no index of version 2: it is live on version 1 and no build is running"):
        catalog.search("toys", lambda v: vectors_for([b"a"], v)[0], version="2")
    build = catalog.start_build("toys", "2")
    items, _ = catalog.items("toys", None, 100)
    vecs = vectors_for([catalog.blobs.get(p.payload["blob"]) for p in items], "2")
    points = [IndexPoint(p.id, v.tolist(), p.payload) for p, v in zip(items, vecs, strict=True)]
    catalog.write_build("toys", build["physical"], points)
    catalog.ingest("toys", [b"d"], [{"n": 4}], vectors_for)  # reaches both
    live = catalog.search("toys", lambda v: vectors_for([b"d"], v)[0], top_k=1)
    shadow = catalog.search("toys", lambda v: vectors_for([b"d"], v)[0], top_k=1, version="2")
    assert (live[0].version, shadow[0].version) == ("1", "2") and live[0].id == shadow[0].id
    assert shadow[0].score == pytest.approx(1.0, abs=1e-4) and shadow[0].payload == {"n": 4}
    info, vector = catalog.vector_of("toys", shadow[0].id, "2")
    assert info.physical == build["physical"] and np.allclose(vector, vectors_for([b"d"], "2")[0], atol=1e-6)
    assert catalog.blob_of("toys", live[0].id) == catalog.blobs.put(b"d")
    assert catalog.info_at("toys", None) == catalog.info("toys") == catalog.info_at("toys", "1")
    assert catalog.drop_build("toys") == build["physical"] and not catalog.index.exists(build["physical"])
    assert catalog.drop_build("toys") is None
    with pytest.raises(NotBuilt, match="no index of version 2"):
        catalog.vector_of("toys", live[0].id, "2")
    assert catalog.count("toys") == 4 and catalog.info("toys").version == "1"
