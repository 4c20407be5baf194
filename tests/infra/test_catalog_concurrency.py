"""The catalog database under concurrency, on SQLite and on PostgreSQL: ingests racing repeated
builds and swaps, from two catalog instances (two search replicas' connections) on one database,
lose nothing, and every stored vector is the live version's; the file catalog of earlier releases
is migrated once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from infra.blobs import BlobStore
from infra.catalog import Catalog
from infra.catalog_db import CatalogDB
from infra.catalog_migration import migrate_json
from infra.errors import Conflict
from infra.vector_index import IndexPoint, physical_name, point_id
from infra.vector_index.edge import EdgeIndex
from tests.conftest import postgres_database
from tests.infra.test_catalog import DIM
from tests.infra.test_catalog import vectors_for as unit_vectors


def vectors_for(images: Sequence[bytes], version: str) -> np.ndarray:
    """The embedding service's stand-in, a little slow, so that races have room."""
    time.sleep(0.002)
    return unit_vectors(images, version)


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
        return
    yield from postgres_database()


def rebuild(catalog: Catalog, name: str, version: str) -> None:
    """What the reindex job does, in process: a build, a cursor pass over the live items, the swap."""
    build = catalog.start_build(name, version)
    cursor: str | None = None
    while True:
        page, cursor = catalog.items(name, cursor, 16)
        blobs = [catalog.blobs.get(p.payload["blob"]) for p in page]
        vecs = vectors_for(blobs, version) if blobs else []
        points = [IndexPoint(p.id, v.tolist(), p.payload) for p, v in zip(page, vecs, strict=True)]
        catalog.write_build(name, build["physical"], points)
        if cursor is None:
            break
    catalog.finish_build(name, build["physical"])


def test_ingests_racing_repeated_swaps_lose_nothing(catalog_url: str, tmp_path: Path) -> None:
    index = EdgeIndex(tmp_path / "index")
    blobs = BlobStore(str(tmp_path / "blobs"))
    replica_a = Catalog(CatalogDB(catalog_url), index, blobs)
    replica_b = Catalog(CatalogDB(catalog_url), index, blobs)
    replica_a.create("toys", "m", "1", DIM)
    acked: dict[str, bytes] = {}
    errors: list[BaseException] = []
    stop = threading.Event()

    def ingest_loop(replica: Catalog, worker: int) -> None:
        n = 0
        while not stop.is_set() and n < 150:  # bounded: every rebuild re-reads what is there
            images = [f"w{worker}-item{n + i}".encode() for i in range(3)]
            try:
                ids = replica.ingest("toys", images, [{"w": worker}] * 3, vectors_for)
            except BaseException as exc:  # noqa: BLE001 - collected and failed on below
                errors.append(exc)
                return
            acked.update(zip(ids, images, strict=True))
            n += 3
            time.sleep(0.01)

    threads = [threading.Thread(target=ingest_loop, args=(r, i)) for i, r in enumerate([replica_a, replica_b] * 2)]
    for t in threads:
        t.start()
    versions = ["2", "3", "4", "5", "6"]
    try:
        for version in versions:
            time.sleep(0.05)
            rebuild(replica_b, "toys", version)
            replica_a.drop_retired(0.0)  # the janitor drops the collection that was live a moment ago
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    info = replica_a.info("toys")
    assert info.version == versions[-1]
    assert len(acked) > 50, "the ingests barely ran alongside the swaps"
    stored = {p.id: p for p in index.get(info.physical, list(acked))}
    assert set(stored) == set(acked), f"{len(set(acked) - set(stored))} acknowledged items were lost"
    assert replica_a.count("toys") == len(acked)
    for item_id, data in acked.items():  # no item kept a vector of an earlier version
        np.testing.assert_allclose(stored[item_id].vector, vectors_for([data], info.version)[0], atol=1e-5)
    # every physical collection but the live one is gone from the index and from the catalog
    assert index.physical_collections() == [info.physical]
    assert [r["physical"] for r in replica_b.db.physical_rows()] == [info.physical]


def test_two_replicas_creating_one_name_get_one_collection(catalog_url: str, tmp_path: Path) -> None:
    index = EdgeIndex(tmp_path / "index")
    blobs = BlobStore(str(tmp_path / "blobs"))
    replicas = [Catalog(CatalogDB(catalog_url), index, blobs) for _ in range(4)]
    outcomes: list[str] = []

    def create(replica: Catalog) -> None:
        try:
            replica.create("dupe", "m", "1", DIM)
            outcomes.append("created")
        except Conflict as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=create, args=(r,)) for r in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["collection 'dupe' exists"] * 3 + ["created"]
    with pytest.raises(Conflict, match="already being rebuilt for version 2"):
        replicas[0].start_build("dupe", "2")
        replicas[1].start_build("dupe", "3")
    assert replicas[2].start_build("dupe", "3", replace=True)["version"] == "3"  # an abandoned build replaced
    assert [
        r["version"] for r in replicas[3].db.physical_rows() if r["physical"] != replicas[3].info("dupe").physical
    ] == ["3"]


def test_the_file_catalog_of_an_earlier_release_is_migrated_once(tmp_path: Path) -> None:
    index = EdgeIndex(tmp_path / "index")
    blobs = BlobStore(str(tmp_path / "blobs"))
    old, live = physical_name("toys", "m", "1"), physical_name("toys", "m", "2")
    for physical in (old, live):
        index.create(physical, DIM, keyword_fields=["blob", "content_hash"])
    key = blobs.put(b"an image")
    index.upsert(live, [IndexPoint(point_id(key), vectors_for([b"an image"], "2")[0].tolist(), {"blob": key})])
    index.set_alias("toys", live)
    folder = tmp_path / "home" / "catalog"
    folder.mkdir(parents=True)
    meta = {"name": "toys", "model": "m", "dim": DIM, "keyword_fields": [], "versions": {old: "1", live: "2"}}
    (folder / "collections.json").write_text(json.dumps({"toys": {**meta, "retired": {old: time.time() - 999}}}))

    catalog = Catalog(CatalogDB(f"sqlite:///{tmp_path / 'catalog.db'}"), index, blobs)
    assert migrate_json(catalog, folder) == 1
    assert not (folder / "collections.json").exists() and (folder / "collections.json.migrated").is_file()
    assert migrate_json(catalog, folder) == 0
    info = catalog.info("toys")
    assert (info.version, info.physical, catalog.count("toys")) == ("2", live, 1)
    hits = catalog.search("toys", lambda v: vectors_for([b"an image"], v)[0], top_k=1)
    assert hits[0].id == point_id(key) and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert catalog.drop_retired(60.0) == [old] and not index.exists(old)  # the retired one kept its time
