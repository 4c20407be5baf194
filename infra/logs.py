"""Logs: one line a record, readable text (the default) or one JSON object (``VLMOPS_LOG_FORMAT=json``),
each carrying the id of the request that caused it.

The id lives in a context variable. The edge sets it for each API call (``services.guard``: the
caller's ``X-Request-ID`` if it is a valid one, else a fresh one), the CLI for each command, a
Celery worker for each job it runs (``workers.app``: the id the job was enqueued with, else its task
id). :class:`~infra.clients.ServiceHTTP` sends it on as ``X-Request-ID`` and a job enqueued carries it
in its message headers, so every line a request causes, in every process, can be found by its id.
Threads started by ``asyncio.to_thread`` / anyio (BentoML's sync APIs) copy the context; other
threads start without an id.

:func:`configure_logging` is called once a process: by the CLI, by each service process after BentoML
configured its own logging (``services.gateway``), by a Celery worker in place of Celery's setup.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID = 128
TASK_HEADER = "vlmops_request_id"  # the Celery message header that carries it
# the packages whose loggers log at ``level`` (third-party ones stay at ``root_level``)
OWN_LOGGERS = ("vlmops", "infra", "registry", "workers", "services", "bench")
# loggers BentoML and Celery give handlers of their own: theirs go, the records reach ours on the root
FOREIGN_HANDLED = ("bentoml", "uvicorn.error", "circus", "celery", "celery.task", "celery.redirected")

_VALID = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_REQUEST_ID}}}")
_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("vlmops_request_id", default=None)
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "request_id"}


def new_request_id() -> str:
    return uuid.uuid4().hex


def valid_request_id(value: str | None) -> str | None:
    """``value`` if it is an id this system passes on (1 to 128 of ``A-Z a-z 0-9 . _ : -``), else None:
    anything else in a header could forge log lines or grow without bound."""
    return value if value is not None and _VALID.fullmatch(value) else None


def request_id_from(value: str | None) -> str:
    """The caller's id if it is valid, else a fresh one."""
    return valid_request_id(value) or new_request_id()


def current_request_id() -> str | None:
    return _REQUEST_ID.get()


def set_request_id(value: str | None) -> contextvars.Token[str | None]:
    return _REQUEST_ID.set(value)


def reset_request_id(token: contextvars.Token[str | None]) -> None:
    _REQUEST_ID.reset(token)


@contextmanager
def request_context(value: str | None = None) -> Iterator[str]:
    """``with request_context(incoming) as rid:`` the id for what runs inside (``incoming`` if valid)."""
    rid = request_id_from(value)
    token = _REQUEST_ID.set(rid)
    try:
        yield rid
    finally:
        _REQUEST_ID.reset(token)


def outgoing_headers() -> dict[str, str] | None:
    """The header that passes the current request id on to a service called now; None without one."""
    rid = _REQUEST_ID.get()
    return {REQUEST_ID_HEADER: rid} if rid is not None else None


class RequestIdFilter(logging.Filter):
    """Stamps each record with the request id of the code that logged it (handlers run in its thread)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = _REQUEST_ID.get()
        return True


def utc_iso(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object a record, on one line: ``ts`` (ISO-8601, UTC), ``level``, ``logger``, ``message``,
    ``request_id`` and ``service`` when known, the fields a caller gave in ``extra``, and ``exc`` (the
    traceback, its newlines escaped) when there is one."""

    def __init__(self, service: str | None = None) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": utc_iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid is not None:
            out["request_id"] = rid
        if self.service is not None:
            out["service"] = self.service
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``2025-06-01T12:00:00.123Z INFO vlmops.access [<request id>]: message``; a traceback follows on
    lines of its own."""

    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", None)
        line = f"{utc_iso(record.created)} {record.levelname} {record.name}{f' [{rid}]' if rid else ''}: "
        line += record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class StderrHandler(logging.Handler):
    """Writes to ``sys.stderr`` as it is when a record comes (a test runner or Celery may swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            stream = sys.stderr
            stream.write(line + "\n")
            stream.flush()
        except Exception:  # logging must not fail the code that logs: reported as logging reports it
            self.handleError(record)


def make_formatter(log_format: str, service: str | None = None) -> logging.Formatter:
    match log_format:
        case "json":
            return JsonFormatter(service)
        case "text":
            return TextFormatter()
        case _:
            raise ValueError(f"unknown log format {log_format!r} (text or json)")


def configure_logging(
    log_format: str = "text",
    service: str | None = None,
    level: int | str = logging.INFO,
    root_level: int | str = logging.WARNING,
) -> logging.Handler:
    """Every record of this process through one handler on the root logger, to stderr, in ``log_format``:
    vlmops' own loggers at ``level``, everything else at ``root_level``; BentoML's and Celery's handlers
    are removed so that their records come out the same way (their loggers keep their levels). Warnings
    become records. Calling it again replaces what an earlier call set."""
    handler = StderrHandler()
    handler.setFormatter(make_formatter(log_format, service))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(root_level)
    for name in FOREIGN_HANDLED:
        foreign = logging.getLogger(name)
        foreign.handlers.clear()
        foreign.propagate = True
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(True)
    if log_format == "json":  # a progress bar on stderr is not a JSON line
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return handler
