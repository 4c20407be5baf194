"""The explorer: the platform's web page (``/explorer/``), a small service of its own.

Search (text, image, more like this), versions side by side, zero-shot, the captioning / VQA / grounding
playground and the registry view, in plain HTML, CSS and JavaScript (``services/explorer_static``; no build
step). Why a service of its own and not a page on the search service: the page calls five services and the
registry, so it needs one origin that reaches them all (no CORS on every service), it needs MLflow and the
job broker (the search service needs neither), and it scales and ships apart from the search replicas.

The browser sends its API key (entered once, kept in the tab's session storage) with every call; the
explorer passes it on, so each service checks it as for any client. What the explorer answers itself
(the registry view, starting a shadow build) it checks against the same keys (``VLMOPS_AUTH__KEYS``).

    bentoml serve services.explorer:ExplorerService --port 3005     # then open http://127.0.0.1:3005/explorer/
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bentoml
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from infra.auth import KeyRing, Principal, Scope
from infra.errors import InvalidInput, Misconfigured, VlmopsError
from infra.logs import configure_logging
from infra.settings import Settings
from services.gateway import bentoml_server_logging, refuse_to_start
from services.guard import OPEN, key_ring, listening_addresses, quiet_client_errors

SETTINGS = Settings()
LIMITS = SETTINGS.explorer
STATIC = Path(__file__).with_name("explorer_static")
MOUNT = "/explorer"
log = logging.getLogger("vlmops.explorer")

# the service calls the page may make through the explorer: service -> (its URL setting, its routes)
PROXIED: dict[str, tuple[str, frozenset[str]]] = {
    "search": (LIMITS.search_url, frozenset({"search", "collections/list", "builds/drop"})),
    "embedding": (LIMITS.embedding_url, frozenset({"classify", "models"})),
    "captioning": (LIMITS.captioning_url, frozenset({"caption", "models"})),
    "vqa": (LIMITS.vqa_url, frozenset({"answer", "models"})),
    "grounding": (LIMITS.grounding_url, frozenset({"ground", "models"})),
}
PASSED_HEADERS = ("authorization", "x-request-id", "content-type")
RETURNED_HEADERS = ("content-type", "cache-control", "etag", "retry-after", "x-request-id")


class RegistryUnavailable(VlmopsError):
    http_status = 502


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Explorer:
    """The page's backend: a proxy to the services with the caller's key, the registry view, shadow builds."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: httpx.AsyncClient | None = None
        self._keys: tuple[KeyRing | None] | None = None
        self._store: Any = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=LIMITS.timeout_s, limits=httpx.Limits(max_connections=64))
        return self._client

    def keys(self) -> KeyRing | None:
        """The keys, read once (``None``: auth is off); refuses to serve a non-loopback address without."""
        if self._keys is None:
            self._keys = (key_ring(self.settings.auth, listening_addresses(), "explorer"),)
        return self._keys[0]

    def principal(self, request: Request, needed: Scope, operation: str) -> Principal:
        ring = self.keys()
        who = OPEN if ring is None else ring.authenticate(request.headers.get("authorization"))
        who.require(needed, operation)
        return who

    # ------------------------------------------------------------------ routes
    async def info(self, request: Request) -> Response:
        """Whether keys are needed, and which services answer (their readiness probes need no key)."""

        async def ready(url: str) -> bool:
            try:
                return (await self.client.get(f"{url}/readyz", timeout=2.0)).status_code == 200
            except httpx.HTTPError:
                return False

        names = list(PROXIED)
        states = await asyncio.gather(*(ready(PROXIED[n][0]) for n in names))
        return JSONResponse({"auth": self.keys() is not None, "services": dict(zip(names, states, strict=True))})

    async def call(self, request: Request) -> Response:
        """POST /api/call/{service}/{route}: the JSON body to the service, with the caller's key."""
        service, route = request.path_params["service"], request.path_params["route"]
        if service not in PROXIED or route not in PROXIED[service][1]:
            return error(404, f"the explorer does not call {service}/{route}")
        size = int(request.headers.get("content-length") or 0)
        if size > LIMITS.max_request_bytes:
            return error(413, f"the request is {size} bytes, over the limit of {LIMITS.max_request_bytes}")
        body = await request.body()
        if len(body) > LIMITS.max_request_bytes:
            return error(413, f"the request is {len(body)} bytes, over the limit of {LIMITS.max_request_bytes}")
        return await self.forward(service, route, body, request)

    async def forward(self, service: str, route: str, body: bytes, request: Request) -> Response:
        url = f"{PROXIED[service][0]}/{route}"
        headers = {h: request.headers[h] for h in PASSED_HEADERS if h in request.headers}
        headers.setdefault("content-type", "application/json")
        try:
            answer = await self.client.post(url, content=body, headers=headers)
        except httpx.TimeoutException:
            return error(504, f"the {service} service did not answer within {LIMITS.timeout_s:.0f} s")
        except httpx.HTTPError as exc:
            return error(502, f"the {service} service ({PROXIED[service][0]}) does not answer: {type(exc).__name__}")
        keep = {k: v for k, v in answer.headers.items() if k in RETURNED_HEADERS}
        return Response(answer.content, status_code=answer.status_code, headers=keep)

    async def thumbnail(self, request: Request) -> Response:
        """GET /api/thumb?collection=&id=&size=: the search service's thumbnail of an item."""
        q = request.query_params
        try:
            body = {"collection": q["collection"], "item_id": q["id"], "size": int(q.get("size", "256"))}
        except (KeyError, ValueError):
            return error(400, "give collection, id and an integer size")
        return await self.forward("search", "thumbnail", httpx.Request("POST", "/", json=body).content, request)

    async def registry(self, request: Request) -> Response:
        """GET /api/registry[?model=NAME]: versions, aliases, lineage, gate metrics, history."""
        from services.explorer_registry import registry_view

        self.principal(request, Scope.read, "the registry view")
        name = request.query_params.get("model")
        view = await self.registry_call(
            lambda: registry_view(self.store(), [name] if name else None, self.settings.gate.metrics)
        )
        return JSONResponse(view)

    async def classes(self, request: Request) -> Response:
        """GET /api/registry/classes?model=&base=production&candidate=candidate[&dataset=HASH]."""
        from services.explorer_registry import class_table

        self.principal(request, Scope.read, "the per-class table")
        q = request.query_params
        if "model" not in q:
            raise InvalidInput("give the model (?model=NAME)")
        table = await self.registry_call(
            lambda: class_table(
                self.store(), q["model"], q.get("base", "production"), q.get("candidate", "candidate"), q.get("dataset")
            )
        )
        return JSONResponse(table)

    async def registry_call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on a thread; the registry failing (MLflow down) is a 502 that names it, not a 500."""
        try:
            return await asyncio.to_thread(fn)
        except VlmopsError:
            raise
        except Exception as exc:
            log.warning("the registry failed: %s: %s", type(exc).__name__, exc)
            raise RegistryUnavailable(
                f"the registry ({self.settings.tracking_uri}) failed: {type(exc).__name__}: {str(exc)[:300]}"
            ) from exc

    def store(self) -> Any:
        """The registry, made on first use (and kept: MLflow's client is made once)."""
        if self._store is None:
            from registry.store import RegistryStore

            self._store = RegistryStore.from_settings(self.settings)
        return self._store

    async def shadow(self, request: Request) -> Response:
        """POST /api/shadow {collection, version}: start a shadow build (a reindex job that keeps the
        collection by ``version`` beside the live one, never swapped in). Needs an admin key."""
        who = self.principal(request, Scope.admin, "a shadow build")
        try:
            body = await request.json()
            collection, version = str(body["collection"]), str(body["version"])
        except (ValueError, KeyError, TypeError):
            return error(400, "send JSON {collection, version}")
        if not version.isdigit():
            raise InvalidInput(f"version {version!r} is not a version number")
        from workers.app import make_app

        task = await asyncio.to_thread(
            make_app(self.settings).send_task,
            "vlmops.reindex",
            args=[collection, version],
            kwargs={"shadow": True},
        )
        log.info("shadow build of %s by version %s: job %s (key %s)", collection, version, task.id, who.name)
        return JSONResponse({"job": task.id, "collection": collection, "version": version})

    async def job(self, request: Request) -> Response:
        """GET /api/jobs/{id}: a job's state and progress."""
        self.principal(request, Scope.read, "a job's state")
        from workers.app import make_app

        result = make_app(self.settings).AsyncResult(request.path_params["job"])
        state = await asyncio.to_thread(lambda: result.state)
        info = result.info if isinstance(result.info, dict) else {"error": str(result.info)} if result.info else {}
        return JSONResponse({"state": state, "info": info})


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})


def app(explorer: Explorer) -> Starlette:
    async def typed(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "http_status", 400)
        return error(status, str(exc))

    routes = [
        Route("/", index),
        Route("/api/info", explorer.info),
        Route("/api/call/{service}/{route:path}", explorer.call, methods=["POST"]),
        Route("/api/thumb", explorer.thumbnail),
        Route("/api/registry", explorer.registry),
        Route("/api/registry/classes", explorer.classes),
        Route("/api/shadow", explorer.shadow, methods=["POST"]),
        Route("/api/jobs/{job}", explorer.job),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={VlmopsError: typed})


EXPLORER = Explorer(SETTINGS)
if bentoml_server_logging():  # a `bentoml serve` process: its logging, and no start without keys off loopback
    configure_logging(SETTINGS.log_format, "vlmops-explorer")
    quiet_client_errors()
    try:
        EXPLORER.keys()
    except Misconfigured as exc:
        refuse_to_start(exc)


@bentoml.asgi_app(app(EXPLORER), path=MOUNT)
@bentoml.service(name="vlmops-explorer", workers=1, traffic={"timeout": 300}, logging={"access": {"enabled": False}})
class ExplorerService:
    """The explorer page and its backend, mounted at ``/explorer``."""
