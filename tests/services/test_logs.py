"""Request ids and log lines at the edge: the gate takes a caller's ``X-Request-ID`` (or makes one), echoes
it and puts it on every line the call causes, in this service and in the embedding service search calls;
the CLI has one per command. A client's mistake is one INFO line, a server error an ERROR with its
traceback, in text and in JSON."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from click.testing import CliRunner

from infra.auth import KeyRing, Scope, create_key
from infra.logs import current_request_id
from infra.process import ServiceProcess, free_port
from registry.families.clip import ClipModel
from registry.store import RegistryStore
from services.cli import main
from services.fastpath import Receive, Send
from services.fastpath import Scope as AsgiScope
from services.guard import Guard, Route
from tests.conftest import make_settings, search_stack
from tests.servers import recording_server

HEX32 = re.compile(r"[0-9a-f]{32}")


# ---------------------------------------------------------------------------------------- the gate, in-process
async def threaded_app(scope: AsgiScope, receive: Receive, send: Send) -> None:
    """Answers with the request id its handler saw on a worker thread (as BentoML runs a sync API)."""
    seen = await anyio.to_thread.run_sync(current_request_id)
    body = json.dumps({"seen": seen}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def gate_call(path: str, headers: dict[str, str], keys: KeyRing | None = None) -> httpx.Response:
    guard = Guard(threaded_app, {"/search": Route("search", Scope.read)}, keys, None, 8, 1 << 20)

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://svc") as client:
            return await client.post(path, json={}, headers=headers)

    return asyncio.run(go())


class TestTheGate:
    def test_the_callers_id_is_echoed_and_seen_by_the_handler_on_its_thread(self) -> None:
        resp = gate_call("/search", {"X-Request-ID": "caller-7:a.b_c"})
        assert resp.headers["x-request-id"] == "caller-7:a.b_c" and resp.json() == {"seen": "caller-7:a.b_c"}

    @pytest.mark.parametrize("sent", [None, "", "two words", "x" * 129, "<script>"])
    def test_no_id_or_an_unsafe_one_gets_a_fresh_one(self, sent: str | None) -> None:
        resp = gate_call("/search", {} if sent is None else {"X-Request-ID": sent})
        rid = resp.headers["x-request-id"]
        assert HEX32.fullmatch(rid) and resp.json() == {"seen": rid}

    def test_a_refused_call_has_its_id_too(self) -> None:
        _, entry = create_key("reader", ["read"])
        resp = gate_call("/search", {"X-Request-ID": "refused-1"}, keys=KeyRing([entry]))
        assert resp.status_code == 401 and resp.headers["x-request-id"] == "refused-1"

    def test_an_open_route_passes_untouched(self) -> None:
        resp = gate_call("/livez", {"X-Request-ID": "probe"})
        assert "x-request-id" not in resp.headers and resp.json() == {"seen": None}

    def test_each_call_ends_with_one_access_line(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.INFO, logger="vlmops.access"):
            gate_call("/search", {"X-Request-ID": "logged-1"})
        (line,) = [r for r in caplog.records if r.name == "vlmops.access"]
        assert (line.levelname, line.operation, line.status) == ("INFO", "search", 200)  # type: ignore[attr-defined]
        assert line.getMessage().startswith("search 200 ")


def test_a_cli_command_sends_one_id_on_all_its_calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VLMOPS_HOME", str(tmp_path))
    ids = []
    for _ in range(2):
        with recording_server([]) as search:
            out = CliRunner().invoke(main, ["collections"], env={"VLMOPS_WORKER__SEARCH_URL": search.url})
            assert out.exit_code == 0, out.output
        (path, headers), *_ = search.requests
        assert path == "/collections/list" and HEX32.fullmatch(headers["x-request-id"])
        ids.append(headers["x-request-id"])
    assert ids[0] != ids[1] and current_request_id() is None  # the command's id ends with it


# ---------------------------------------------------------------------------------------- real services, JSON logs
def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a service's output: each one a JSON object (log records and audit lines)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def lines_of(path: Path, rid: str, logger: str = "vlmops.access", timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The records with request id ``rid`` once its ``logger`` line is there (it is written as the call ends)."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = [r for r in json_lines(path) if r.get("request_id") == rid and "level" in r]
        if any(r["logger"] == logger for r in rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    home = tmp_path_factory.mktemp("json-logs")
    model = ClipModel.from_pretrained("vlmops-toy-clip", seed=1)
    with search_stack(home, model, env={"VLMOPS_LOG_FORMAT": "json"}) as (_, _, search):
        created = httpx.post(f"{search}/collections/create", json={"name": "logged"}, timeout=60)
        assert created.status_code == 200, created.text
        yield home, search


@pytest.mark.slow
def test_the_id_is_echoed_and_on_the_lines_of_both_services(stack: tuple[Path, str]) -> None:
    home, search = stack
    body = {"collection": "logged", "text": "a red circle"}
    resp = httpx.post(f"{search}/search", json=body, headers={"X-Request-ID": "req-search-1"}, timeout=60)
    assert resp.status_code == 200 and resp.headers["x-request-id"] == "req-search-1"
    (here,) = lines_of(home / "search.log", "req-search-1")
    assert (here["level"], here["service"], here["operation"]) == ("INFO", "vlmops-search", "search")
    assert here["status"] == 200
    # the call search made for it: the embedding service logged it under the same id
    (there,) = lines_of(home / "embedding.log", "req-search-1")
    assert (there["service"], there["operation"], there["status"]) == ("vlmops-embedding", "embed_text", 200)
    assert datetime_ok(here["ts"]) and datetime_ok(there["ts"])


def datetime_ok(ts: str) -> bool:
    return re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ts) is not None


@pytest.mark.slow
def test_without_an_id_or_with_an_unsafe_one_the_service_makes_one(stack: tuple[Path, str]) -> None:
    home, search = stack
    body = {"collection": "logged", "text": "a blue square"}
    fresh = [httpx.post(f"{search}/search", json=body, headers=h, timeout=60) for h in ({}, {"X-Request-ID": "a b"})]
    ids = [r.headers["x-request-id"] for r in fresh]
    assert all(r.status_code == 200 for r in fresh) and all(HEX32.fullmatch(i) for i in ids) and ids[0] != ids[1]
    for rid in ids:  # the id made at the edge went on to the embedding service
        assert [r["operation"] for r in lines_of(home / "embedding.log", rid)] == ["embed_text"]


@pytest.mark.slow
def test_a_client_error_is_one_info_line_and_the_service_serves_on(stack: tuple[Path, str]) -> None:
    home, search = stack
    mistakes = {
        "missing-collection": {"collection": "nope", "text": "x"},
        "bad-body": {"collection": 3},
        "two-queries": {"collection": "logged", "text": "x", "item_id": "y"},
    }
    for rid, body in mistakes.items():
        resp = httpx.post(f"{search}/search", json=body, headers={"X-Request-ID": rid}, timeout=60)
        assert 400 <= resp.status_code < 500 and resp.headers["x-request-id"] == rid
        rows = lines_of(home / "search.log", rid)
        errors = [r for r in rows if r["logger"] != "vlmops.access"]
        assert len(errors) == 1 and errors[0]["level"] == "INFO" and "exc" not in errors[0], rows
        assert errors[0]["message"].startswith("Exception on /search [POST]: "), rows
    missing = lines_of(home / "search.log", "missing-collection")[0]["message"]
    assert missing.endswith("NotFound: no collection 'nope'")
    ok = httpx.post(f"{search}/search", json={"collection": "logged", "text": "x"}, timeout=60)
    assert ok.status_code == 200
    for service in ("search", "embedding"):
        rows = json_lines(home / f"{service}.log")
        assert [r for r in rows if r.get("level") in ("ERROR", "CRITICAL") or "exc" in r] == []
        assert [r for r in rows if isinstance(r.get("status"), int) and r["status"] >= 500] == []


# ---------------------------------------------------------------------------------------- text and JSON: 4xx vs 5xx
@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_4xx_is_an_info_line_and_a_5xx_an_error_with_its_traceback(log_format: str, tmp_path: Path) -> None:
    store = RegistryStore.from_settings(make_settings(tmp_path))
    store.promote("vlmops-clip", store.register("vlmops-clip", ClipModel.from_pretrained("vlmops-toy-clip")).version)
    env = {
        "VLMOPS_HOME": str(tmp_path),
        "VLMOPS_LOG_FORMAT": log_format,
        "VLMOPS_SEARCH__EMBEDDING_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens: 503
    }
    log = tmp_path / "search.log"
    with ServiceProcess("search", env=env, log_path=log) as svc:
        assert httpx.post(f"{svc.url}/collections/create", json={"name": "c"}, timeout=60).status_code == 200
        client = httpx.post(f"{svc.url}/search", json={"collection": "gone", "text": "x"}, timeout=60)
        server = httpx.post(f"{svc.url}/search", json={"collection": "c", "text": "x"}, timeout=60)
        assert (client.status_code, server.status_code) == (404, 503)
        assert httpx.post(f"{svc.url}/collections/list", json={}, timeout=60).status_code == 200
        time.sleep(0.5)  # the last access lines
    client_id, server_id = client.headers["x-request-id"], server.headers["x-request-id"]
    text = log.read_text()
    if log_format == "json":
        rows = json_lines(log)
        (four,) = [r for r in rows if r.get("request_id") == client_id and r["logger"] != "vlmops.access"]
        assert four["level"] == "INFO" and "NotFound: no collection 'gone'" in four["message"]
        (five,) = [r for r in rows if r.get("request_id") == server_id and r["logger"] != "vlmops.access"]
        assert five["level"] == "ERROR" and five["exc"].startswith("Traceback (most recent call last)")
        assert "embedding service unreachable" in five["exc"]
        assert [r for r in rows if "exc" in r] == [five]
    else:
        (four,) = [line for line in text.splitlines() if f"[{client_id}]: Exception on" in line]
        assert " INFO " in four and "NotFound: no collection 'gone'" in four
        (five,) = [line for line in text.splitlines() if f"[{server_id}]: Exception on" in line]
        before, after = text.split(five + "\n", 1)
        assert " ERROR " in five and "Traceback" not in before
        assert after.startswith("Traceback (most recent call last):") and "embedding service unreachable" in after
