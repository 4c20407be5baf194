"""The service client backs off on 429 / 503 within its deadline, and sends its key and the current request
id."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from infra.clients import ServiceError, ServiceHTTP, retry_wait
from infra.logs import request_context
from tests.servers import recording_server, reply_json


class Flaky(http.server.BaseHTTPRequestHandler):
    """Answers ``busy`` requests with 429 (Retry-After: 0) or 503, then 200 with what it saw."""

    busy = 0
    status = 429
    seen: list[tuple[float, str | None]] = []

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        Flaky.seen.append((time.monotonic(), self.headers.get("authorization")))
        if Flaky.busy > 0:
            Flaky.busy -= 1
            retry = {"Retry-After": "0"} if Flaky.status == 429 else {}
            reply_json(self, Flaky.status, json.dumps([{"error": "busy"}]).encode(), **retry)
        else:
            reply_json(self, 200, json.dumps({"tries": len(Flaky.seen)}).encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    Flaky.seen = []
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


@pytest.mark.parametrize("status", [429, 503])
def test_retries_until_the_service_answers(server: str, status: int) -> None:
    Flaky.busy, Flaky.status = 3, status
    out = ServiceHTTP(server, api_key="vlmops_app_" + "ab" * 24, timeout=10).post("/x", {})
    assert out == {"tries": 4}
    assert all(auth == "Bearer vlmops_app_" + "ab" * 24 for _, auth in Flaky.seen)


def test_gives_up_at_the_deadline_with_the_last_answer(server: str) -> None:
    Flaky.busy, Flaky.status = 10_000, 503
    started = time.monotonic()
    with pytest.raises(ServiceError) as info:
        ServiceHTTP(server, timeout=10).post("/x", {}, deadline_s=0.5)
    assert info.value.http_status == 503 and "busy" in info.value.message
    assert time.monotonic() - started < 1.5 and len(Flaky.seen) > 1


def test_backoff_is_jittered_and_bounded() -> None:
    class Resp:
        headers: dict[str, str] = {}

    waits = [retry_wait(Resp(), attempt) for attempt in range(12) for _ in range(20)]  # type: ignore[arg-type]
    assert all(0 <= w <= 5.0 for w in waits) and len(set(waits)) > 100  # random, capped at 5 s
    Resp.headers = {"retry-after": "2"}
    assert all(1.0 <= retry_wait(Resp(), 0) <= 2.0 for _ in range(50))  # type: ignore[arg-type]


def test_passes_on_the_request_id_it_is_called_under() -> None:
    with recording_server({}) as svc:
        client = ServiceHTTP(svc.url, timeout=10)
        client.post("/outside", {})
        with request_context("req-77"):
            client.post("/inside", {})
    assert [(path, h.get("x-request-id")) for path, h in svc.requests] == [("/outside", None), ("/inside", "req-77")]
