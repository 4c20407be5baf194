"""Typed HTTP clients of the services (embedding, search, captioning, VQA, grounding), for the CLI, the
workers, tests and benchmarks: in infra, so that the workers reach the services without importing ``services/``."""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from pydantic import SecretStr

from infra.errors import InvalidInput, NotFound, PayloadTooLarge, VlmopsError
from infra.images import to_base64
from infra.logs import outgoing_headers
from infra.settings import Settings


class ServiceError(VlmopsError):
    """The service answered with an error status; ``status`` and the service's message are kept."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.http_status = status
        self.message = message


RETRY_STATUSES = (429, 503)


def retry_wait(resp: httpx.Response, attempt: int, base_s: float = 0.1, cap_s: float = 5.0) -> float:
    """How long to wait before the next try: the server's ``Retry-After`` if it gave one, else full-jitter
    exponential backoff (a random wait up to ``base_s * 2**attempt``, at most ``cap_s``)."""
    hint = resp.headers.get("retry-after", "")
    ceiling = min(cap_s, base_s * 2**attempt)
    if hint.isdigit():
        return min(cap_s, float(hint)) * (0.5 + random.random() / 2)
    return random.uniform(0, ceiling)


class ServiceHTTP:
    """An HTTP client of one service: its key on every request, the current request id
    (``X-Request-ID``, see ``infra.logs``) passed on, and 429 / 503 retried with jittered backoff until
    ``deadline_s`` after the call began (then the last answer is raised)."""

    def __init__(self, base_url: str, api_key: SecretStr | str | None = None, timeout: float = 120.0) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.timeout = timeout
        self.http = httpx.Client(base_url=base_url, timeout=timeout, headers=headers)

    def close(self) -> None:
        self.http.close()

    def post(self, route: str, payload: dict[str, Any], deadline_s: float | None = None) -> Any:
        deadline = time.monotonic() + (self.timeout if deadline_s is None else deadline_s)
        attempt = 0
        headers = outgoing_headers()
        while True:
            resp = self.http.post(route, json=payload, headers=headers)
            if resp.status_code in RETRY_STATUSES:
                wait = retry_wait(resp, attempt)
                if time.monotonic() + wait < deadline:
                    time.sleep(wait)
                    attempt += 1
                    continue
            raise_for_status(resp)
            return resp.json()


def raise_for_status(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
    except ValueError:
        body = resp.text
    if isinstance(body, list) and body and isinstance(body[0], dict):
        message = str(body[0].get("error", body))
    elif isinstance(body, dict):
        message = "; ".join([str(body.get("error", ""))] + [str(d.get("msg")) for d in body.get("detail", [])])
    else:
        message = str(body)
    match resp.status_code:
        case 404:
            raise NotFound(message)
        case 413:
            raise PayloadTooLarge(message)
        case 400 | 415 | 422:
            raise InvalidInput(message)
        case _:
            raise ServiceError(resp.status_code, message)


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray
    versions: list[str]
    model: str
    truncated: list[bool]


class EmbeddingClient(ServiceHTTP):
    def __init__(self, base_url: str, api_key: SecretStr | str | None = None, timeout: float = 120.0) -> None:
        super().__init__(base_url, api_key, timeout)

    @staticmethod
    def _embeddings(rows: list[dict[str, Any]]) -> Embeddings:
        """Vectors asked for as base64 float32 (parsing numbers from JSON cost a quarter of a fast model's
        time per image, ``bench.pipeline_stages``); a row with numbers is read too."""
        vectors = [
            np.frombuffer(base64.b64decode(r["vector_b64"]), dtype="<f4") if r.get("vector_b64") else r["vector"]
            for r in rows
        ]
        return Embeddings(
            vectors=np.asarray(vectors, dtype=np.float32),
            versions=[r["version"] for r in rows],
            model=rows[0]["model"] if rows else "",
            truncated=[bool(r.get("truncated", False)) for r in rows],
        )

    def embed_text(self, texts: Sequence[str], model_version: str | None = None) -> Embeddings:
        items = [{"text": t, "model_version": model_version, "encoding": "base64"} for t in texts]
        return self._embeddings(self.post("/embed_text", {"items": items}))

    def embed_image(self, images: Sequence[bytes], model_version: str | None = None) -> Embeddings:
        items = [{"image": to_base64(b), "model_version": model_version, "encoding": "base64"} for b in images]
        return self._embeddings(self.post("/embed_image", {"items": items}))

    def classify(
        self,
        images: Sequence[bytes],
        labels: Sequence[str],
        templates: Sequence[str] | None = None,
        model_version: str | None = None,
    ) -> list[dict[str, Any]]:
        items = [
            {"image": to_base64(b), "labels": list(labels), "templates": templates, "model_version": model_version}
            for b in images
        ]
        return list(self.post("/classify", {"items": items}))

    def models(self) -> dict[str, Any]:
        return dict(self.post("/models", {}))


class TaskClient(ServiceHTTP):
    """The captioning, VQA and grounding services: one image (PNG/JPEG bytes) per item; each answer is the
    service's JSON (with ``model`` and ``version``)."""

    def caption(self, images: Sequence[bytes], **params: Any) -> list[dict[str, Any]]:
        return list(self.post("/caption", {"items": [{"image": to_base64(im), **params} for im in images]}))

    def answer(self, images: Sequence[bytes], questions: Sequence[str]) -> list[dict[str, Any]]:
        items = [{"image": to_base64(im), "question": q} for im, q in zip(images, questions, strict=True)]
        return list(self.post("/answer", {"items": items}))

    def ground(
        self, images: Sequence[bytes], queries: Sequence[Sequence[str]], threshold: float | None = None
    ) -> list[dict[str, Any]]:
        extra = {} if threshold is None else {"threshold": threshold}
        items = [{"image": to_base64(im), "queries": list(q), **extra} for im, q in zip(images, queries, strict=True)]
        return list(self.post("/ground", {"items": items}))


class SearchClient:
    """The search service's API: collections, ingest, search, and the rebuild protocol of the reindex job."""

    def __init__(self, base_url: str, api_key: SecretStr | str | None = None, timeout: float = 300.0) -> None:
        self.service = ServiceHTTP(base_url, api_key, timeout)

    def close(self) -> None:
        self.service.close()

    def post(self, route: str, **body: Any) -> Any:
        return self.service.post(route, body)

    def collections(self) -> list[dict[str, Any]]:
        return list(self.post("/collections/list"))

    def collection(self, name: str) -> dict[str, Any]:
        for row in self.collections():
            if row["name"] == name:
                return dict(row)
        raise NotFound(f"no collection {name!r}")


def search_client(settings: Settings) -> SearchClient:
    """The search service of ``settings``, called with this process's key (``VLMOPS_AUTH__KEY``)."""
    return SearchClient(settings.worker.search_url, api_key=settings.auth.key)


def embedding_client(settings: Settings) -> EmbeddingClient:
    return EmbeddingClient(settings.worker.embedding_url, api_key=settings.auth.key)
