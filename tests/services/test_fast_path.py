"""The hot path's routing and error mapping, in process (its answers are compared with BentoML's own
path on real servers in ``test_embedding_service.py::TestFastPath``)."""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from types import SimpleNamespace
from typing import Any

import pytest
from bentoml.exceptions import BentoMLException
from pydantic import BaseModel

from infra.settings import AuthSettings, EmbeddingSettings
from services.fastpath import FastPath, RequestTooLarge, error_body, read_body
from services.gateway import gateway


class Passed:
    """The downstream app (BentoML's): records what reached it."""

    def __init__(self) -> None:
        self.paths: list[tuple[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append((scope["method"], scope["path"]))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"bentoml"})


class Echo(BaseModel):
    text: str


async def echo(_instance: object, text: str) -> Any:
    return SimpleNamespace(status_code=200, raw_headers=[], body=text.upper().encode())


def call(app: FastPath, method: str, path: str, body: bytes, content_type: bytes = b"application/json") -> Any:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": [(b"content-type", content_type)]}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], sent[1]["body"]


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr("services.fastpath.bentoml.get_current_service", lambda: object())
    return SimpleNamespace(apis={"shout": SimpleNamespace(route="/shout", input_spec=Echo, func=echo)})


def test_hot_routes_are_answered_and_everything_else_goes_on_to_bentoml(service: Any) -> None:
    downstream = Passed()
    app = FastPath(downstream, service, ["shout"], max_body_bytes=100)
    assert call(app, "POST", "/shout", b'{"text": "hi"}') == (200, b"HI")
    assert call(app, "GET", "/shout", b"") == (299, b"bentoml")
    assert call(app, "POST", "/other", b"{}") == (299, b"bentoml")
    assert call(app, "POST", "/shout", b"text", b"text/plain") == (299, b"bentoml")
    assert downstream.paths == [("GET", "/shout"), ("POST", "/other"), ("POST", "/shout")]
    status, body = call(app, "POST", "/shout", b'{"text": 3}')
    assert status == 400 and json.loads(body)["detail"][0]["loc"] == ["text"]
    status, body = call(app, "POST", "/shout", b'{"text": "' + b"x" * 200 + b'"}')
    assert status == 413 and "over the limit of 100 bytes" in json.loads(body)[0]["error"]


def test_switched_off_every_request_goes_to_bentoml(service: Any) -> None:
    downstream = Passed()
    app = FastPath(downstream, service, ["shout"], max_body_bytes=100, enabled=False)
    assert call(app, "POST", "/shout", b'{"text": "hi"}') == (299, b"bentoml")


def test_errors_get_bentomls_statuses_and_bodies() -> None:
    not_found = BentoMLException("no version '9'", error_code=HTTPStatus.NOT_FOUND)
    assert error_body(not_found) == (404, b'[{"error": "no version \'9\'"}]')
    busy = BentoMLException("overloaded, retry later", error_code=HTTPStatus.SERVICE_UNAVAILABLE)
    assert error_body(busy) == (503, b'{"error": "overloaded, retry later"}')
    status, body = error_body(RuntimeError("secret detail"))
    assert status == 500 and b"secret" not in body


def test_read_body_joins_chunks_and_stops_at_the_limit() -> None:
    def chunks(*parts: bytes) -> Any:
        messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        return receive

    assert asyncio.run(read_body(chunks(b"ab", b"cd"), 4)) == b"abcd"
    with pytest.raises(RequestTooLarge):
        asyncio.run(read_body(chunks(b"ab", b"cde"), 4))


def test_the_gateway_names_an_api_the_service_lacks_or_one_without_a_scope() -> None:
    from services.embedding import EmbeddingService

    auth = AuthSettings()
    with pytest.raises(ValueError, match="no API named nope"):
        gateway(EmbeddingSettings(), auth, read=("embed_text",), hot=("embed_text", "nope"))(EmbeddingService)
    with pytest.raises(ValueError, match="give the APIs classify, embed_image, models a scope"):
        gateway(EmbeddingSettings(), auth, read=("embed_text",))(EmbeddingService)
    edge = EmbeddingService.inner.__vlmops_edge__
    assert edge.hot == ("embed_text", "embed_image", "classify")
    assert {name: scope.name for name, scope in edge.scopes.items()} == dict.fromkeys(
        ["embed_text", "embed_image", "classify", "models"], "read"
    )
