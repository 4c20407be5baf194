"""Security at the edge, on real servers: every route of the five services behind keys and scopes, the
audit log of mutations, ingest by uri confined to what an operator allowed, fuzzing with zero server
errors, and a service that refuses to listen on the network without keys."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from infra.images import to_base64
from infra.process import ServiceProcess
from registry.families.clip import ClipModel
from registry.store import RegistryStore
from tests.conftest import make_settings
from tests.services.security.helpers import (
    BODIES,
    IMAGES,
    MATRIX,
    MAX_BODY,
    OPEN_ROUTES,
    SCOPES,
    SERVICES,
    Stack,
    lower,
)

pytestmark = pytest.mark.slow


def test_every_api_route_is_in_the_matrix(stack: Stack) -> None:
    for service, url in stack.urls.items():
        paths = set(httpx.get(f"{url}/docs.json", timeout=10).json()["paths"])
        assert paths - OPEN_ROUTES == set(SCOPES[service]), service


@pytest.mark.parametrize("service, route, scope", MATRIX, ids=[f"{s}{r}" for s, r, _ in MATRIX])
def test_a_route_needs_a_known_key_with_its_scope(stack: Stack, service: str, route: str, scope: str) -> None:
    body = BODIES[route]
    none = stack.post(service, route, body)
    assert none.status_code == 401 and "needs an API key" in none.json()[0]["error"]
    assert none.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.post(
        f"{stack.urls[service]}{route}", json=body, headers={"authorization": "Bearer vlmops_admin-client_" + "0" * 48}
    )
    assert wrong.status_code == 401 and "not valid" in wrong.json()[0]["error"]
    below = lower(scope)
    if below is not None:
        denied = stack.post(service, route, body, key=below)
        assert denied.status_code == 403
        assert f"needs a key with the '{scope}' scope" in denied.json()[0]["error"]
    allowed = stack.post(service, route, body, key=scope)
    assert allowed.status_code not in (401, 403), allowed.text


def norm(row: dict[str, Any]) -> float:
    return float(np.linalg.norm(np.asarray(row["vector"], dtype=np.float32)))


def test_a_read_key_gets_real_answers(stack: Stack) -> None:
    for route in ("/embed_text", "/embed_image"):
        (row,) = stack.post("embedding", route, BODIES[route], key="read").json()
        assert abs(norm(row) - 1.0) < 1e-4 and row["version"] == "1"
    (cls,) = stack.post("embedding", "/classify", BODIES["/classify"], key="read").json()
    assert abs(sum(cls["probs"]) - 1.0) < 1e-4
    assert isinstance(stack.post("captioning", "/caption", BODIES["/caption"], key="read").json()[0]["caption"], str)
    assert isinstance(stack.post("vqa", "/answer", BODIES["/answer"], key="read").json()[0]["answer"], str)
    (found,) = stack.post("grounding", "/ground", BODIES["/ground"], key="read").json()
    assert found["detections"] and all(len(d["box"]) == 4 for d in found["detections"])
    assert stack.post("embedding", "/models", {}, key="admin").json()["production"] == "1"  # admin implies read


def test_probes_and_metrics_stay_open(stack: Stack) -> None:
    for url in stack.urls.values():
        for probe in ("/livez", "/readyz", "/healthz"):
            assert httpx.get(f"{url}{probe}", timeout=10).status_code == 200
        assert "# TYPE" in httpx.get(f"{url}/metrics", timeout=10).text


def test_collection_lifecycle_by_scope_and_its_audit_trail(stack: Stack) -> None:
    start = len(stack.audit_lines())
    name = "lifecycle"
    assert stack.post("search", "/collections/create", {"name": name}, key="read").status_code == 403
    assert stack.post("search", "/collections/create", {"name": name}, key="write").json()["name"] == name
    items = [{"image": to_base64(b), "payload": {"n": i}} for i, b in enumerate(IMAGES)]
    assert stack.post("search", "/ingest", {"collection": name, "items": items}, key="write").json()["count"] == 4
    hits = stack.post("search", "/search", {"collection": name, "text": "a red circle", "top_k": 4}, key="read").json()
    assert len(hits) == 4 and {h["payload"]["n"] for h in hits} == {0, 1, 2, 3}  # search → embedding with its key
    # a write key cannot delete, and the collection is still there with all of its items
    assert stack.post("search", "/collections/delete", {"name": name}, key="write").status_code == 403
    rows = {r["name"]: r for r in stack.post("search", "/collections/list", {}, key="read").json()}
    assert rows[name]["count"] == 4
    # the rebuild protocol is admin's: re-embed every item and swap
    build = stack.post("search", "/builds/start", {"collection": name, "version": "2"}, key="admin").json()
    page = stack.post("search", "/builds/items", {"collection": name, "limit": 10}, key="admin").json()
    assert len(page["items"]) == 4 and page["next_cursor"] is None
    texts = {"items": [{"text": f"t{i}", "model_version": "2"} for i in range(4)]}
    vectors = stack.post("embedding", "/embed_text", texts, key="read")
    points = [
        {
            "id": it["id"],
            "vector_b64": to_base64(np.asarray(v["vector"], dtype="<f4").tobytes()),
            "payload": it["payload"],
        }
        for it, v in zip(page["items"], vectors.json(), strict=True)
    ]
    body = {"collection": name, "physical": build["physical"], "points": points}
    assert stack.post("search", "/builds/write", body, key="admin").json()["count"] == 4
    done = stack.post("search", "/builds/finish", {"collection": name, "physical": build["physical"]}, key="admin")
    assert done.json()["count"] == 4 and done.json()["version"] == "2"
    assert stack.post("search", "/collections/delete", {"name": name}, key="admin").json() == {"deleted": name}
    names = [r["name"] for r in stack.post("search", "/collections/list", {}, key="read").json()]
    assert name not in names

    trail = [(a["key"], a["operation"], a["target"], a["outcome"]) for a in stack.audit_lines()[start:]]
    assert sorted(trail, key=str) == sorted(  # lines are written as calls end: two may swap
        [
            ("read-client", "create_collection", None, "denied"),
            ("write-client", "create_collection", name, "ok"),
            ("write-client", "ingest", name, "ok"),
            ("write-client", "delete_collection", None, "denied"),
            ("admin-client", "start_build", name, "ok"),
            ("admin-client", "build_items", name, "ok"),
            ("admin-client", "write_build", name, "ok"),
            ("admin-client", "finish_build", name, "ok"),
            ("admin-client", "delete_collection", name, "ok"),
        ],
        key=str,
    )  # reads (search, list, embed) are not in it
    assert all(a["service"] == "vlmops-search" for a in stack.audit_lines()[start:])


class CountingHandler(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:  # noqa: N802
        CountingHandler.hits += 1
        self.send_response(200)
        self.end_headers()
        self.wfile.write(IMAGES[3])

    def log_message(self, *args: Any) -> None:
        pass


def test_ingest_by_uri_reads_only_under_the_prefixes(stack: Stack) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CountingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert stack.post("search", "/collections/create", {"name": "uris"}, key="write").status_code == 200
        refused = [
            str(stack.secret / "private.png"),  # exists
            str(stack.secret / "absent.png"),  # does not
            str(stack.allowed / ".." / "secret" / "private.png"),
            str(stack.allowed / "escape.png"),  # a symlink out
            str(stack.allowed / "absent.png"),
            "/etc/passwd",
            "/etc/no-such-file",
            "file:///etc/passwd",
            "file:///etc/no-such-file",
            f"http://127.0.0.1:{server.server_port}/x.png",
            f"http://127.0.0.1:{server.server_port}/absent.png",
        ]
        answers = set()
        for uri in refused:
            resp = stack.post("search", "/ingest", {"collection": "uris", "items": [{"uri": uri}]}, key="write")
            answers.add((resp.status_code, resp.json()[0]["error"].replace(repr(uri), "<uri>")))
        assert len(answers) == 1 and next(iter(answers))[0] == 404, answers
        assert CountingHandler.hits == 0  # nothing was fetched from the network
        ok = {"collection": "uris", "items": [{"uri": str(stack.allowed / "ok.png")}]}
        assert stack.post("search", "/ingest", ok, key="write").json()["count"] == 1
        rows = {r["name"]: r for r in stack.post("search", "/collections/list", {}, key="read").json()}
        assert rows["uris"]["count"] == 1  # the refused ones stored nothing
    finally:
        server.shutdown()


def test_malformed_bodies_are_4xx_and_the_service_serves_on(stack: Stack) -> None:
    key = {"authorization": f"Bearer {stack.keys['admin']}"}
    for service, routes in SCOPES.items():
        for route in routes:
            url = f"{stack.urls[service]}{route}"
            multipart = httpx.post(url, content=b"--x\r\n", headers=key | {"content-type": "multipart/form-data"})
            assert multipart.status_code == 415 and "application/json" in multipart.json()[0]["error"]
            broken = httpx.post(url, content=b'{"items": [', headers=key | {"content-type": "application/json"})
            assert 400 <= broken.status_code < 500, (route, broken.text)
    big = json.dumps({"collection": "uris", "items": [{"image": "A" * MAX_BODY}]}).encode()
    as_json = key | {"content-type": "application/json"}
    sized = httpx.post(f"{stack.urls['search']}/ingest", content=big, headers=as_json)

    def chunks() -> Iterator[bytes]:  # no length: cut off at the limit
        return (big[k : k + 65536] for k in range(0, len(big), 65536))

    chunked = httpx.post(f"{stack.urls['search']}/ingest", content=chunks(), headers=as_json)
    hot = httpx.post(f"{stack.urls['embedding']}/embed_text", content=chunks(), headers=as_json)  # the fast path's
    for resp in (sized, chunked, hot):
        assert resp.status_code == 413 and f"limit of {MAX_BODY}" in resp.json()[0]["error"]
    stack.post("search", "/collections/create", {"name": "ids"}, key="write")
    bad_id = stack.post("search", "/search", {"collection": "ids", "item_id": "not-a-uuid"}, key="read")
    assert bad_id.status_code == 404 and "no item" in bad_id.json()[0]["error"]
    (row,) = stack.post("embedding", "/embed_text", BODIES["/embed_text"], key="read").json()
    assert abs(norm(row) - 1.0) < 1e-4
    for service in SERVICES:  # a client's mistake is logged without a traceback
        assert "Traceback" not in (stack.logs / f"{service}.log").read_text(), service


@pytest.mark.parametrize("service", SERVICES)
def test_fuzzing_finds_no_server_error(stack: Stack, service: str) -> None:
    """schemathesis against the live OpenAPI document, every operation, bounded examples."""
    st = Path(sys.executable).with_name("st")
    cmd = [
        str(st), "run", f"{stack.urls[service]}/docs.json",
        "--checks", "not_a_server_error",
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", "100",
        "--workers", "1",
        "--header", f"Authorization: Bearer {stack.keys['admin']}",
        "--request-timeout", "60",
        "--seed", "1",
        "--no-color",
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=stack.logs)  # its cache there
    assert run.returncode == 0, run.stdout[-8000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert counts is not None and int(counts[1]) > 100 and counts[1] == counts[2], run.stdout[-2000:]
    assert "Traceback" not in (stack.logs / f"{service}.log").read_text()


def test_a_service_on_the_network_without_keys_refuses_to_start(tmp_path: Path) -> None:
    env = {"VLMOPS_HOME": str(tmp_path), "VLMOPS_AUTH__KEYS": ""}
    svc = ServiceProcess("embedding", env=env, log_path=tmp_path / "exposed.log", host="0.0.0.0", ready_timeout_s=90)
    with pytest.raises(RuntimeError, match="exited"):
        svc.start()
    svc.stop()
    assert "listens on 0.0.0.0 with no API keys configured: refusing to start" in (tmp_path / "exposed.log").read_text()
    cli = subprocess.run(
        [str(Path(sys.executable).with_name("vlmops")), "serve", "search", "--host", "0.0.0.0"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 2 and "refusing to start" in cli.stderr


def test_auth_disabled_explicitly_serves_on_the_network(tmp_path: Path) -> None:
    store = RegistryStore.from_settings(make_settings(tmp_path))
    store.promote("vlmops-clip", store.register("vlmops-clip", ClipModel.from_pretrained("vlmops-toy-clip")).version)
    env = {"VLMOPS_HOME": str(tmp_path), "VLMOPS_AUTH__DISABLED": "true"}
    with ServiceProcess("embedding", env=env, log_path=tmp_path / "open.log", host="0.0.0.0") as svc:
        (row,) = httpx.post(f"{svc.url}/embed_text", json=BODIES["/embed_text"], timeout=30).json()
        assert abs(norm(row) - 1.0) < 1e-4


def test_a_search_service_with_a_refused_key_says_it_is_its_own_fault(stack: Stack, tmp_path: Path) -> None:
    """The embedding service refuses the search service's key: a 500 for the caller (not its 401) and
    the log names the setting to fix."""
    env = {
        "VLMOPS_HOME": str(tmp_path),
        "VLMOPS_MLFLOW_TRACKING_URI": f"sqlite:///{stack.logs / 'mlflow.db'}",
        "VLMOPS_ARTIFACT_ROOT": (stack.logs / "mlartifacts").as_uri(),
        "VLMOPS_AUTH__KEYS": (stack.logs / "keys.txt").read_text(),
        "VLMOPS_AUTH__KEY": "vlmops_search-svc_" + "0" * 48,
        "VLMOPS_SEARCH__EMBEDDING_URL": stack.urls["embedding"],
    }
    with ServiceProcess("search", env=env, log_path=tmp_path / "search.log") as svc:
        headers = {"authorization": f"Bearer {stack.keys['write']}"}
        made = httpx.post(f"{svc.url}/collections/create", json={"name": "c"}, headers=headers, timeout=60)
        assert made.status_code == 200
        body = {"collection": "c", "text": "a star"}
        resp = httpx.post(f"{svc.url}/search", json=body, headers=headers, timeout=60)
        assert resp.status_code == 500
    assert "refused this search service's key (VLMOPS_AUTH__KEY)" in (tmp_path / "search.log").read_text()
