"""Real backing servers for the tests that cross machines: an ``mlflow server`` process with a
PostgreSQL backend store and the artifact proxy; and a stand-in service that records what it is sent."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.process import free_port, terminate_group, wait_http


@contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, log: Path) -> Iterator[str]:
    """``mlflow server --serve-artifacts`` on a free port; yields its URL (the tracking URI clients use)."""
    port = free_port()
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        backend_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", 120, proc)
        yield url
    finally:
        terminate_group(proc, 20)


def reply_json(handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes, **headers: str) -> None:
    """Answer an ``http.server`` request with a JSON body (``headers``: extra ones, e.g. Retry-After)."""
    handler.send_response(status)
    for name, value in {**headers, "content-type": "application/json", "content-length": str(len(body))}.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


@dataclass
class Recorded:
    url: str
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # (path, headers lower-cased)


@contextmanager
def recording_server(answer: Any) -> Iterator[Recorded]:
    """An HTTP server on a free port that answers every POST with ``answer`` as JSON and records each
    request's path and headers (a service stand-in for what its callers send)."""
    body = json.dumps(answer).encode()
    seen: list[tuple[str, dict[str, str]]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length", 0)))
            seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            reply_json(self, 200, body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Recorded(f"http://127.0.0.1:{server.server_port}", seen)
    finally:
        server.shutdown()
        server.server_close()
