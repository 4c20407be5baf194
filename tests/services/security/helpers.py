"""What the security tests share: the routes and their scopes, request bodies, the stack of secured services."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from infra.images import encode_png, to_base64
from infra.toyworld import ToyWorld

SERVICES = ("embedding", "captioning", "vqa", "grounding", "search")
OPEN_ROUTES = {"/livez", "/readyz", "/healthz", "/metrics"}
IMAGES = [encode_png(s.image) for s in ToyWorld().samples(4)]
IMAGE = to_base64(IMAGES[0])

# every API route of every service and the scope it needs (checked against the services' OpenAPI)
SCOPES: dict[str, dict[str, str]] = {
    "embedding": {"/embed_text": "read", "/embed_image": "read", "/classify": "read", "/models": "read"},
    "captioning": {"/caption": "read", "/models": "read"},
    "vqa": {"/answer": "read", "/models": "read"},
    "grounding": {"/ground": "read", "/models": "read"},
    "search": {
        "/collections/list": "read",
        "/search": "read",
        "/thumbnail": "read",
        "/collections/create": "write",
        "/ingest": "write",
        "/collections/delete": "admin",
        "/builds/start": "admin",
        "/builds/items": "admin",
        "/builds/write": "admin",
        "/builds/write_vectors": "admin",
        "/builds/finish": "admin",
        "/builds/drop": "admin",
        "/ingest/known": "admin",
        "/ingest/vectors": "admin",
    },
}
BODIES: dict[str, dict[str, Any]] = {
    "/embed_text": {"items": [{"text": "a red circle"}]},
    "/embed_image": {"items": [{"image": IMAGE}]},
    "/classify": {"items": [{"image": IMAGE, "labels": ["a red circle", "a blue square"]}]},
    "/caption": {"items": [{"image": IMAGE}]},
    "/answer": {"items": [{"image": IMAGE, "question": "what colour is the star?"}]},
    "/ground": {"items": [{"image": IMAGE, "queries": ["a red circle"], "threshold": 0.0}]},
    "/models": {},
    "/collections/list": {},
    "/search": {"collection": "guarded", "text": "a red circle"},
    "/collections/create": {"name": "guarded"},
    "/ingest": {"collection": "guarded", "items": [{"image": IMAGE}]},
    "/collections/delete": {"name": "guarded"},
    "/builds/start": {"collection": "guarded", "version": "1"},
    "/builds/items": {"collection": "guarded"},
    "/builds/write": {"collection": "guarded", "physical": "x", "points": []},
    "/builds/write_vectors": {"collection": "guarded", "physical": "x", "ids": [], "payloads": [], "vectors_b64": ""},
    "/builds/finish": {"collection": "guarded", "physical": "x"},
    "/builds/drop": {"collection": "guarded"},
    "/thumbnail": {"collection": "guarded", "item_id": "00000000-0000-0000-0000-000000000000"},
    "/ingest/known": {"collection": "guarded", "ids": []},
    "/ingest/vectors": {"collection": "guarded", "blobs": [], "payloads": [], "vectors_b64": {}},
}
MAX_BODY = 3_000_000
MATRIX = [(svc, route, scope) for svc, routes in SCOPES.items() for route, scope in routes.items()]


@dataclass
class Stack:
    urls: dict[str, str]
    keys: dict[str, str]  # scope → a key with exactly that scope
    audit: Path
    allowed: Path
    secret: Path
    logs: Path
    grpc: dict[str, str] = field(default_factory=dict)  # service → its gRPC target

    def post(self, service: str, route: str, body: dict[str, Any], key: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.keys[key]}"} if key else {}
        return httpx.post(f"{self.urls[service]}{route}", json=body, headers=headers, timeout=60, **kw)

    def audit_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.read_text().splitlines() if line.strip()]


def lower(scope: str) -> str | None:
    return {"read": None, "write": "read", "admin": "write"}[scope]
