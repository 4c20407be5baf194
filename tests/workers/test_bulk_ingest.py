"""The bulk ingest job through a real Celery worker, against real services: a folder or a list of URIs
read within the allowed prefixes, bad files reported, a killed job run again storing each image once,
and a page embedded before a rebuild started sent again with the build's version."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infra.images import encode_png, to_base64
from infra.toyworld import Split, ToyWorld
from registry.families.clip import ClipModel
from tests.conftest import make_settings
from tests.workers.helpers import (
    MODEL,
    call,
    count,
    fresh_broker,
    item_ids,
    kill_mid_job,
    start_worker,
    stop_worker,
)

pytestmark = pytest.mark.slow


def test_bulk_ingest_job_reads_a_folder(stack: dict[str, Any], tmp_path: Path) -> None:
    url = stack["search"]
    call(url, "/collections/create", name="bulk")
    folder = tmp_path / "images"
    folder.mkdir()
    for i, s in enumerate(ToyWorld().samples(20, Split.VAL, n_objects=1)):
        (folder / f"{i}.png").write_bytes(encode_png(s.image))
    uris = sorted(str(p) for p in folder.iterdir()) + [str(folder / "0.png")]  # a duplicate: stored once
    (folder / "notes.txt").write_bytes(b"not an image")  # in the folder: reported, the job goes on
    (tmp_path / "elsewhere.png").write_bytes((folder / "0.png").read_bytes())  # exists, outside the prefix
    broker = fresh_broker(9)
    # the job reads within the same rules as the search service: only under the allowed prefixes
    env = {**stack["env"], "VLMOPS_BROKER_URL": broker, "VLMOPS_SEARCH__INGEST_URI_PREFIXES": json.dumps([str(folder)])}
    from workers.app import make_app

    worker = start_worker(env, tmp_path / "worker.log")
    try:
        app = make_app(make_settings(stack["home"], broker_url=broker))
        result = app.send_task("vlmops.ingest", args=["bulk", uris]).get(timeout=120)
        outside = app.send_task("vlmops.ingest", args=["bulk", [uris[1], str(tmp_path / "elsewhere.png")]])
        with pytest.raises(Exception, match="uri 1: nothing readable at"):
            outside.get(timeout=120)
        # the folder again, as a user sends it: `vlmops ingest --job` follows the job with a progress bar
        again = subprocess.run(
            [str(Path(sys.executable).with_name("vlmops")), "ingest", "bulk", f"{folder}/", "--job"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
    assert result == {
        "collection": "bulk",
        "ingested": 21,
        "stored": 20,
        "skipped": 1,
        "rejected": 0,
        "errors": [],
        "count": 20,
    }
    # the folder again: nothing stored twice, the text file named (and the exit status says so)
    assert again.returncode == 1, again.stderr
    assert "bulk: 0 stored, 20 already there, 1 rejected; 20 items" in again.stdout
    assert f"rejected {folder / 'notes.txt'}: " in again.stderr and "could not be decoded" in again.stderr
    assert "21/21" in again.stderr and "img/s" in again.stderr  # the progress bar: items/s
    assert count(url, "bulk")[0] == 20  # the refused job sent nothing, not even its allowed first page
    hits = call(url, "/search", collection="bulk", text="a red circle", top_k=3)
    assert hits and hits[0]["payload"]["uri"].startswith(str(folder))
    for i in (0, 7, 19):  # the worker's vector of each image is the one the service embeds it to
        (hit,) = call(url, "/search", collection="bulk", image=to_base64((folder / f"{i}.png").read_bytes()), top_k=1)
        assert hit["payload"]["uri"] == str(folder / f"{i}.png") and hit["score"] > 0.9999 and hit["version"] == "1"


def test_a_killed_bulk_ingest_run_again_stores_each_image_once(stack: dict[str, Any], tmp_path: Path) -> None:
    """A bulk ingest of a folder of 1,200 images in pages of 32, SIGKILLed mid-job and redelivered to a new
    worker: it skips what the first one stored (by content hash) and ends with every image once."""
    name, url, n = "bulk-killed", stack["search"], 1200
    call(url, "/collections/create", name=name)
    folder = tmp_path / "images"
    for i, s in enumerate(ToyWorld().samples(n, Split.TRAIN, start=60_000)):
        (folder / f"{i // 100:02d}").mkdir(parents=True, exist_ok=True)
        (folder / f"{i // 100:02d}" / f"{i:05d}.png").write_bytes(encode_png(s.image))
    files = sorted(folder.rglob("*.png"))
    distinct = len({f.read_bytes() for f in files})
    broker = fresh_broker(10)
    env = {
        **stack["env"],
        "VLMOPS_BROKER_URL": broker,
        "VLMOPS_WORKER__PAGE_SIZE": "32",
        "VLMOPS_WORKER__VISIBILITY_TIMEOUT_S": "3",
        "VLMOPS_SEARCH__INGEST_URI_PREFIXES": json.dumps([str(folder)]),
    }
    from workers.app import make_app

    app = make_app(make_settings(stack["home"], broker_url=broker))
    first = start_worker(env, tmp_path / "worker1.log")
    result = app.send_task("vlmops.ingest", args=[name], kwargs={"folder": str(folder)})
    kill_mid_job(first, result, done=400)
    stored_before = count(url, name)[0]
    assert 0 < stored_before < distinct
    second = start_worker(env, tmp_path / "worker2.log")
    try:
        out = result.get(timeout=300)
    finally:
        stop_worker(second)
    assert out["ingested"] == n and out["rejected"] == 0
    assert out["skipped"] >= stored_before  # the second run skipped what the first had stored ...
    assert out["stored"] + out["skipped"] == n and out["count"] == distinct  # ... and stored the rest
    ids = item_ids(url, name)
    assert len(ids) == len(set(ids)) == distinct == count(url, name)[0]  # every image, none twice
    for f in files[:: n // 30]:
        (hit,) = call(url, "/search", collection=name, image=to_base64(f.read_bytes()), top_k=1)
        assert hit["version"] == "1" and hit["score"] > 0.9999, hit


def test_a_bulk_page_embedded_before_a_build_started_is_sent_again_with_the_builds_version(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    """The ingest pipeline against the real search service: a rebuild starts after the job embedded its first
    page with the live version alone. The service refuses that page (``missing``), the job embeds it with the
    build's version too and sends it again, so the build holds every item, by its own version."""
    from infra.clients import SearchClient
    from infra.uris import UriPolicy
    from workers.embedder import EmbedderCache
    from workers.pipelines.ingest import FileWork, run_ingest

    name, url = "bulk-racing", stack["search"]
    call(url, "/collections/create", name=name)
    v = stack["store"].register(MODEL, ClipModel.from_pretrained("vlmops-toy-clip", seed=17)).version
    folder = tmp_path / "images"
    folder.mkdir()
    for i, s in enumerate(ToyWorld().samples(40, Split.TRAIN, start=80_000)):
        (folder / f"{i:03d}.png").write_bytes(encode_png(s.image))
    cache = EmbedderCache(make_settings(stack["home"]))
    asked: list[str] = []
    build: dict[str, Any] = {}

    def embedder_for(version: str) -> Any:
        asked.append(version)
        if not build:  # the first page is being embedded by version 1 alone: a rebuild starts now
            build.update(call(url, "/builds/start", collection=name, version=v))
        return cache.get(MODEL, version)

    files = FileWork(UriPolicy([str(folder)], []), 1 << 24, str(stack["home"] / "blobs"))
    try:
        search = SearchClient(url)
        uris = sorted(str(p) for p in folder.iterdir())
        out = run_ingest(name, uris, search, files, embedder_for, page_size=16)
    finally:
        files.close()
    assert (out.stored, out.rejected, out.count) == (40, 0, 40)
    # every page by both versions: the first, embedded before the build, was refused and embedded again
    assert asked[0] == "1" and asked.count("1") == asked.count(v) == 3
    done = call(url, "/builds/finish", collection=name, physical=build["physical"])  # every live item is in it
    assert done["version"] == v and done["count"] == 40
    for f in sorted(folder.iterdir())[::7]:  # each by the build's version: the service embeds the query so
        (hit,) = call(url, "/search", collection=name, image=to_base64(f.read_bytes()), top_k=1)
        assert hit["version"] == v and hit["score"] > 0.9999 and hit["payload"]["uri"] == str(f)
