"""The search service over gRPC, with a real embedding service behind it: collections, ingest (unary and
streamed), search by text, image and item id, payload filters, the error codes; and the CLI over gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from click.testing import CliRunner

from infra.errors import Conflict, InvalidInput, NotBuilt, NotFound
from infra.images import encode_png
from infra.process import ServiceProcess, running
from infra.toyworld import Split, ToyWorld
from registry.families.clip import ClipModel
from registry.store import RegistryStore
from services.cli import main
from services.client import SearchGrpc
from services.proto.vlmops.v1 import common_pb2, search_pb2, search_pb2_grpc
from tests.conftest import make_settings

pytestmark = pytest.mark.slow
CHUNK = 32  # the search service's max_items: IngestStream stores in chunks of it


@dataclass
class Served:
    search: ServiceProcess
    home: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, toy_clip: tuple[ClipModel, dict[str, float]]) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("grpc-search")
    store = RegistryStore.from_settings(make_settings(home))
    store.promote("vlmops-clip", store.register("vlmops-clip", toy_clip[0]).version)
    env = {
        "VLMOPS_HOME": str(home),
        "VLMOPS_EMBEDDING__MAX_LATENCY_MS": "10000",
        "VLMOPS_SEARCH__MAX_ITEMS": str(CHUNK),
    }
    emb = ServiceProcess("embedding", env=env, log_path=home / "embedding.log")
    search_env = env | {"VLMOPS_SEARCH__EMBEDDING_URL": emb.url}
    with running(emb, ServiceProcess("search", env=search_env, log_path=home / "search.log")) as (_, search):
        yield Served(search, home)


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[SearchGrpc]:
    with SearchGrpc(served.search.grpc_target) as c:
        yield c


def one_per_class(start: int = 0) -> list[tuple[bytes, str]]:
    samples = [ToyWorld().sample(i, Split.TEST, n_objects=1) for i in range(start, start + 300)]
    return [(encode_png(s.image), s.label) for s in {s.label: s for s in samples}.values()]


def test_a_collection_over_grpc_from_create_to_delete(client: SearchGrpc) -> None:
    made = client.create_collection("shapes", keyword_fields=["label"])
    assert (made.name, made.model, made.version, made.dim) == ("shapes", "vlmops-clip", "1", 96)
    with pytest.raises(Conflict, match="exists"):
        client.create_collection("shapes")

    classes = one_per_class()
    assert len(classes) == 24
    payloads = [{"label": label, "n": i} for i, (_, label) in enumerate(classes)]
    first = client.ingest("shapes", [b for b, _ in classes], payloads)
    assert len(first.ids) == 24 and first.count == 24
    # idempotent by content (the same payloads: a re-ingest without one would store the item's payload empty)
    again = client.ingest("shapes", [b for b, _ in classes[:3]], payloads[:3])
    assert list(again.ids) == list(first.ids[:3]) and again.count == 24

    more = [
        (encode_png(s.image), {"label": s.label, "streamed": True})
        for s in ToyWorld().samples(100, Split.TRAIN, n_objects=1)
    ]
    streamed = client.ingest_stream("shapes", iter(more), chunk=16)  # 7 requests, stored in chunks of 32
    assert len(streamed.ids) == 100 and len(set(streamed.ids)) == len({b for b, _ in more}) and streamed.count >= 100
    (row,) = [c for c in client.collections() if c.name == "shapes"]
    assert row.count == streamed.count and row.version == "1"

    # meaning: each class's name finds an image of that class first
    hits = {label: client.search("shapes", text=label, top_k=3) for _, label in classes}
    assert np.mean([found[0].payload["label"] == label for label, found in hits.items()]) >= 0.9
    assert all(h.model == "vlmops-clip" and h.version == "1" for found in hits.values() for h in found)
    by_image = client.search("shapes", image=classes[5][0], top_k=1)[0]
    assert (
        by_image.id == first.ids[5] and by_image.score > 0.99 and by_image.payload == {"label": classes[5][1], "n": 5}
    )
    like = client.search("shapes", item_id=first.ids[7], top_k=2)
    assert like[0].id == first.ids[7]
    only = client.search("shapes", text="a red circle", top_k=20, filter={"label": "a blue star"})
    assert only and {h.payload["label"] for h in only} == {"a blue star"}
    pinned = client.search("shapes", text="a red circle", top_k=3, model_version="1")  # the live version
    assert [h.id for h in pinned] == [h.id for h in hits["a red circle"]]
    with pytest.raises(NotBuilt, match="no index of version 2.*shadow build"):  # FAILED_PRECONDITION
        client.search("shapes", text="a red circle", model_version="2")

    assert client.delete_collection("shapes") == "shapes"
    with pytest.raises(NotFound):
        client.search("shapes", text="a red circle")


def test_each_bad_call_gets_its_code_and_nothing_is_harmed(served: Served, client: SearchGrpc) -> None:
    client.create_collection("guarded")
    good = [b for b, _ in one_per_class(500)[:4]]
    assert client.ingest("guarded", good).count == 4
    stub_channel = grpc.insecure_channel(served.search.grpc_target)
    stub = search_pb2_grpc.SearchStub(stub_channel)
    item = search_pb2.IngestItem
    cases = [
        (stub.Search, search_pb2.SearchRequest(collection="nope", text="a"), grpc.StatusCode.NOT_FOUND, "nope"),
        (stub.Search, search_pb2.SearchRequest(collection="guarded"), grpc.StatusCode.INVALID_ARGUMENT, "exactly one"),
        (
            stub.Search,
            search_pb2.SearchRequest(collection="guarded", text="a", top_k=0),
            grpc.StatusCode.INVALID_ARGUMENT,
            "top_k",
        ),
        (
            stub.Search,
            search_pb2.SearchRequest(collection="guarded", image=b"junk"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "decoded",
        ),
        (
            stub.Search,
            search_pb2.SearchRequest(collection="guarded", item_id="no-such-id"),
            grpc.StatusCode.NOT_FOUND,
            "",
        ),
        (
            stub.Ingest,
            search_pb2.IngestRequest(collection="nope", items=[item(image=good[0])]),
            grpc.StatusCode.NOT_FOUND,
            "nope",
        ),
        (
            stub.Ingest,
            search_pb2.IngestRequest(collection="guarded", items=[item(image=good[0]), item(image=b"junk")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "item 1",
        ),
        (
            stub.Ingest,
            search_pb2.IngestRequest(collection="guarded", items=[item()]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "image and uri",
        ),
        (
            stub.Ingest,
            search_pb2.IngestRequest(
                collection="guarded", items=[item(image=good[0], payload={"k": common_pb2.Value()})]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "no value",
        ),
        (
            stub.Ingest,
            search_pb2.IngestRequest(collection="guarded", items=[item(uri="/etc/passwd")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "",
        ),
        (
            stub.Ingest,
            search_pb2.IngestRequest(collection="guarded", items=[item(image=good[0])] * (CHUNK + 1)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "IngestStream",
        ),
        (stub.DeleteCollection, search_pb2.DeleteCollectionRequest(name="nope"), grpc.StatusCode.NOT_FOUND, "nope"),
    ]
    for method, request, code, fragment in cases:
        with pytest.raises(grpc.RpcError) as caught:
            method(request, timeout=60)
        assert caught.value.code() is code, (request, caught.value.details())
        assert fragment in caught.value.details()
        assert client.search("guarded", text="a red circle", top_k=10)  # serving on
    assert [c.count for c in client.collections() if c.name == "guarded"] == [4]  # nothing stored by the bad ones

    # a bad item in the third chunk of a stream: the stream fails naming it, after the two chunks before it
    stream = [(encode_png(s.image), {}) for s in ToyWorld().samples(3 * CHUNK, Split.TEST, start=3000)]
    stream[2 * CHUNK + 3] = (b"junk", {})
    with pytest.raises(InvalidInput, match="item 3"):
        client.ingest_stream("guarded", iter(stream), chunk=8)
    assert [c.count for c in client.collections() if c.name == "guarded"][0] >= 4 + CHUNK
    two = iter(
        [
            search_pb2.IngestRequest(collection="guarded", items=[item(image=good[0])]),
            search_pb2.IngestRequest(collection="other"),
        ]
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.IngestStream(two, timeout=60)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "one collection" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        stub.IngestStream(iter([]), timeout=60)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    stub_channel.close()
    assert "Traceback" not in (served.home / "search.log").read_text()


def test_the_cli_ingests_and_searches_over_grpc(served: Served, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i, (data, label) in enumerate(one_per_class(1000)):
        (folder / f"{i:02d}-{label.replace(' ', '_')}.png").write_bytes(data)
    target = served.search.grpc_target
    out = CliRunner().invoke(main, ["ingest", "cli-shapes", str(folder), "--create", "--grpc", target, "--batch", "5"])
    assert out.exit_code == 0, out.output
    assert "cli-shapes: 24 items" in out.output
    out = CliRunner().invoke(main, ["search", "cli-shapes", "a green square", "--grpc", target, "--top-k", "3"])
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 3 and "a_green_square" in lines[0] and " v1 " in lines[0]
