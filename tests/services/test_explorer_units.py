"""The explorer's parts without a browser: the registry view and per-class table read from MLflow tags,
and the thumbnail cache."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image
from starlette.testclient import TestClient

from infra.auth import create_key
from infra.errors import InvalidInput, NotFound, PayloadTooLarge
from infra.images import encode_png
from infra.settings import Settings
from registry.families.clip import ClipModel
from registry.gate import eval_tag
from registry.store import RegistryStore
from services.explorer import Explorer, app
from services.explorer_registry import class_table, registry_view
from services.thumbnails import ThumbnailCache, check_size, make_thumbnail

PER_CLASS = {
    "1": {"a red circle": (0.9, 0.8, 0.85), "a blue star": (0.6, 0.5, 0.55)},
    "2": {"a red circle": (0.7, 0.6, 0.65), "a blue star": (0.8, 0.7, 0.75)},
}


def tag(version: str, at: float) -> str:
    rows = {
        label: {"class_recall@10": r, "class_precision@10": p, "class_r_precision": rp, "n_images": 4}
        for label, (r, p, rp) in PER_CLASS[version].items()
    }
    metrics = {"class_r_precision": sum(v[2] for v in PER_CLASS[version].values()) / 2}
    return json.dumps({"metrics": metrics, "per_class": rows, "at": at, "dataset": "toy-eval", "class_queries": []})


def test_registry_view_and_the_class_table(sqlite_store: RegistryStore, random_clip: ClipModel) -> None:
    store = sqlite_store
    v1 = store.register("m", random_clip, tags={"dataset_hash": "d" * 64}, metrics={"t2i_recall@5": 0.5}).version
    store.promote("m", v1, reason="first")
    v2 = store.register("m", random_clip, tags={"base_version": v1}).version
    with pytest.raises(NotFound, match="share no per-class evaluation"):
        class_table(store, "m", "production", "candidate", None)
    for version, at in ((v1, 1.0), (v2, 2.0)):
        store.client.set_model_version_tag("m", version, eval_tag("e" * 64), tag(version, at))
    store.promote("m", v2, reason="better on stars")
    store.rollback("m", reason="circles dropped")

    (view,) = registry_view(store, gate_metrics=["class_r_precision", "t2i_recall@5"])
    assert view["name"] == "m" and [v["version"] for v in view["versions"]] == [v2, v1]
    newest, oldest = view["versions"]
    assert oldest["aliases"] == ["production"] and "production" not in newest["aliases"]  # rolled back
    assert newest["lineage"]["base_version"] == v1 and oldest["lineage"]["dataset_hash"] == "d" * 64
    assert oldest["metrics"]["t2i_recall_at_5"] == "0.5" and newest["evals"]["e" * 16]["classes"] == 2
    assert newest["evals"]["e" * 16]["gate"] == {"class_r_precision": pytest.approx(0.7)}  # what it has
    assert newest["evals"]["e" * 16]["dataset"] == "toy-eval"
    assert [(e["action"], e["version"], e["reason"]) for e in view["history"]] == [
        ("rollback", v1, "circles dropped"),
        ("promote", v2, "better on stars"),
        ("promote", v1, "first"),
    ]

    table = class_table(store, "m", "production", v2, None)
    assert (table["base"], table["candidate"], table["dataset"]) == (v1, v2, "e" * 16)
    assert table["metrics"] == ["class_recall@10", "class_precision@10", "class_r_precision"]
    rows = {r["class"]: r["metrics"] for r in table["rows"]}
    assert rows["a red circle"]["class_r_precision"]["diff"] == pytest.approx(-0.2)
    assert rows["a blue star"]["class_recall@10"] == pytest.approx({"base": 0.6, "candidate": 0.8, "diff": 0.2})
    with pytest.raises(InvalidInput, match="same version"):
        class_table(store, "m", v1, "production", None)
    with pytest.raises(NotFound, match="no per-class evaluation on dataset"):
        class_table(store, "m", v1, v2, "f" * 16)


def test_thumbnails_are_bounded_and_the_cache_evicts_the_least_recent() -> None:
    image = Image.new("RGB", (300, 150), (200, 30, 30))
    made = make_thumbnail(encode_png(image), 128, max_bytes=10**6, max_pixels=10**6)
    thumb = Image.open(io.BytesIO(made))
    assert thumb.format == "JPEG" and thumb.size == (128, 64)
    assert thumb.getpixel((64, 32))[0] > 150  # the same picture
    with pytest.raises(PayloadTooLarge):
        make_thumbnail(encode_png(image), 128, max_bytes=10**6, max_pixels=1000)
    with pytest.raises(InvalidInput, match="could not be decoded"):
        make_thumbnail(b"not an image", 128, max_bytes=10**6, max_pixels=10**6)
    with pytest.raises(InvalidInput, match="size must be one of"):
        check_size(100)
    cache = ThumbnailCache(max_bytes=250)
    for n in range(3):
        cache.put((f"k{n}", 64), bytes(100))
    assert len(cache) == 2 and cache.get(("k0", 64)) is None and cache.bytes == 200
    assert cache.get(("k1", 64)) is not None  # now the most recent
    cache.put(("k3", 64), bytes(100))
    assert cache.get(("k2", 64)) is None and cache.get(("k1", 64)) is not None
    cache.put(("big", 64), bytes(1000))  # over the whole budget: not kept
    assert cache.get(("big", 64)) is None and cache.bytes <= 250


class _DownRegistry(Explorer):
    def store(self) -> RegistryStore:
        raise ConnectionError("connection refused")


def test_the_explorer_checks_keys_itself_and_names_a_failing_registry(tmp_path: Path) -> None:
    """What the explorer answers itself (registry view, shadow builds) takes the platform's keys; a registry
    that fails is a 502 naming it, not a 500."""
    read, read_entry = create_key("viewer", ["read"])
    settings = Settings(home=tmp_path, auth={"keys": read_entry.line()})  # type: ignore[arg-type]
    client = TestClient(app(_DownRegistry(settings)))
    assert client.get("/api/registry").status_code == 401
    assert client.get("/api/registry", headers={"authorization": "Bearer vlmops_x_" + "0" * 48}).status_code == 401
    down = client.get("/api/registry", headers={"authorization": f"Bearer {read}"})
    assert down.status_code == 502 and "the registry" in down.json()["error"] and "connection refused" in down.text
    shadow = client.post(
        "/api/shadow", json={"collection": "c", "version": "2"}, headers={"authorization": f"Bearer {read}"}
    )
    assert shadow.status_code == 403 and "'admin' scope" in shadow.json()["error"]
    unknown = client.post("/api/call/search/collections/delete", json={"name": "c"})
    assert unknown.status_code == 404 and "does not call search/collections/delete" in unknown.json()["error"]
    assert client.get("/api/thumb?collection=c").status_code == 400
    page = client.get("/")
    assert (
        page.status_code == 200 and "vlmops explorer" in page.text and client.get("/static/app.js").status_code == 200
    )
