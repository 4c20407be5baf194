"""Log lines: JSON objects (one a line, the traceback a field) or readable text, each with the request id
of the code that logged it; ids from outside are taken only when they are safe to pass on."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import threading
from datetime import UTC, datetime

import pytest

from infra.logs import (
    JsonFormatter,
    RequestIdFilter,
    TextFormatter,
    current_request_id,
    outgoing_headers,
    request_context,
    request_id_from,
    valid_request_id,
)
from tests.conftest import REPO


def record(message: str = "hello %s", *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("vlmops.test", logging.ERROR if exc else logging.INFO, __file__, 1, message, args, exc_info)
    rec.__dict__.update(extra)
    RequestIdFilter().filter(rec)
    return rec


class TestRequestIds:
    @pytest.mark.parametrize("value", ["a", "0123abcd", "trace-1:span_2.x", "A" * 128, "550e8400-e29b-41d4"])
    def test_a_safe_id_is_taken_as_it_is(self, value: str) -> None:
        assert valid_request_id(value) == value
        assert request_id_from(value) == value

    @pytest.mark.parametrize(
        "value", [None, "", "A" * 129, "has space", "new\nline", 'quote"', "ümlaut", "semi;colon", "a/b", "{}"]
    )
    def test_anything_else_is_replaced_by_a_fresh_id(self, value: str | None) -> None:
        assert valid_request_id(value) is None
        fresh = request_id_from(value)
        assert re.fullmatch(r"[0-9a-f]{32}", fresh) and fresh != request_id_from(value)

    def test_the_context_sets_the_id_and_restores_the_one_before(self) -> None:
        assert current_request_id() is None and outgoing_headers() is None
        with request_context("outer") as outer:
            with request_context("bad id") as inner:
                assert current_request_id() == inner != "bad id"
            assert current_request_id() == outer == "outer"
            assert outgoing_headers() == {"X-Request-ID": "outer"}
        assert current_request_id() is None

    def test_threads_of_asyncio_carry_it_and_plain_threads_do_not(self) -> None:
        seen: dict[str, str | None] = {}

        async def main() -> None:
            with request_context("in-loop"):
                seen["to_thread"] = await asyncio.to_thread(current_request_id)
                plain = threading.Thread(target=lambda: seen.update(plain=current_request_id()))
                plain.start()
                plain.join()

        asyncio.run(main())
        assert seen == {"to_thread": "in-loop", "plain": None}


class TestJsonFormatter:
    def test_a_record_is_one_object_with_its_fields(self) -> None:
        with request_context("req-1"):
            rec = record("hello %s", "world", operation="search", status=404)
        line = JsonFormatter("vlmops-search").format(rec)
        out = json.loads(line)
        assert out == {
            "ts": out["ts"],
            "level": "INFO",
            "logger": "vlmops.test",
            "message": "hello world",
            "request_id": "req-1",
            "service": "vlmops-search",
            "operation": "search",
            "status": 404,
        }
        ts = datetime.fromisoformat(out["ts"])
        assert ts.tzinfo is not None and ts.utcoffset() == UTC.utcoffset(None)
        assert abs(ts.timestamp() - rec.created) < 0.001

    def test_the_traceback_is_a_field_on_the_same_line(self) -> None:
        line = JsonFormatter().format(record("failed", exc=True))
        assert "\n" not in line
        out = json.loads(line)
        assert out["level"] == "ERROR" and "request_id" not in out and "service" not in out
        assert out["exc"].startswith("Traceback (most recent call last)")
        assert out["exc"].endswith("ValueError: boom\nsecond line")

    def test_a_value_json_cannot_encode_is_written_as_text(self) -> None:
        out = json.loads(JsonFormatter().format(record("x", data={"when": datetime(2025, 1, 2, tzinfo=UTC)})))
        assert out["data"] == {"when": "2025-01-02 00:00:00+00:00"}


class TestTextFormatter:
    def test_one_readable_line_with_the_request_id(self) -> None:
        with request_context("req-2"):
            line = TextFormatter().format(record("hello %s", "there"))
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO vlmops\.test \[req-2\]: hello there", line)
        assert TextFormatter().format(record("no id")).endswith(" INFO vlmops.test: no id")

    def test_the_traceback_follows_on_lines_of_its_own(self) -> None:
        first, *rest = TextFormatter().format(record("failed", exc=True)).splitlines()
        assert first.endswith("ERROR vlmops.test: failed")
        assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "second line"


CONFIGURED = """
import asyncio, logging, sys, warnings
from bentoml._internal.log import configure_server_logging
from infra.logs import configure_logging, request_context

configure_server_logging()  # BentoML's handlers on the root logger and on its own loggers, as in a service
configure_logging("json", "svc")
with request_context("abc"):
    logging.getLogger("bentoml.serve").info("from bentoml")
    logging.getLogger("services.fastpath").info("ours at INFO")
    logging.getLogger("some.library").info("a library's INFO: dropped")
    asyncio.run(asyncio.to_thread(logging.getLogger("infra.catalog").warning, "in a thread"))
    try:
        1 / 0
    except ZeroDivisionError:
        logging.getLogger("vlmops.guard").exception("failed")
warnings.warn("careful")
"""


def test_configured_every_record_of_the_process_is_one_json_line() -> None:
    run = subprocess.run(
        [sys.executable, "-c", CONFIGURED], capture_output=True, text=True, cwd=REPO, timeout=120, check=True
    )
    assert run.stdout == ""  # BentoML's handler (stdout) is gone
    rows = [json.loads(line) for line in run.stderr.splitlines()]
    assert [(r["logger"], r["message"]) for r in rows[:4]] == [
        ("bentoml.serve", "from bentoml"),
        ("services.fastpath", "ours at INFO"),
        ("infra.catalog", "in a thread"),
        ("vlmops.guard", "failed"),
    ]
    assert all(r["request_id"] == "abc" and r["service"] == "svc" for r in rows[:4])
    assert "ZeroDivisionError: division by zero" in rows[3]["exc"]
    assert rows[4]["logger"] == "py.warnings" and "careful" in rows[4]["message"] and "request_id" not in rows[4]
    assert len(rows) == 5
