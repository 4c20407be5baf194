"""The ceiling for a Python server on this machine: the vlmops batcher and the same model behind
the least HTTP server there is (uvloop, httptools, prebuilt response bytes, no validation, no
middleware). A peer in ``make bench`` only (texts): how much of the gap between the service and the
raw forward is the serving stack's, and how much is the machine's (a closed-loop round trip between
batches, and the GIL shared by the event loop and the model thread).

    python -m bench.bound_server MODEL_DIR PORT
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import httptools
import uvloop

from infra.settings import resolve_device, resolve_precision
from infra.threads import in_fresh_thread, one_torch_thread
from registry.families.clip import ClipModel
from services.batcher import Batcher


class _Protocol(asyncio.Protocol):
    def __init__(self, batcher: Batcher) -> None:
        self.batcher = batcher
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.url = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        asyncio.get_running_loop().create_task(self._answer(body, self.url))

    async def _answer(self, body: bytes, url: bytes) -> None:
        assert self.transport is not None
        if url == b"/readyz":
            out = b"{}"
        else:
            texts = [item["text"] for item in json.loads(body)["items"]]
            out = b"[" + b",".join(await self.batcher.submit("embed_text", None, texts)) + b"]"
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(out)
        self.transport.write(head + out)


async def serve(model_dir: Path, port: int) -> None:
    device = resolve_device("auto")
    model = in_fresh_thread(lambda: ClipModel.load(model_dir, device=device))
    model.configure_runtime(resolve_precision("auto", device))
    one_torch_thread()

    def run(op: Any, key: Any, texts: list[str]) -> list[bytes]:
        vectors, _ = model.encode_text(texts)
        return [json.dumps({"vector": v, "dim": len(v)}).encode() for v in vectors.tolist()]

    batcher = Batcher(run, max_batch_size=32, max_latency_ms=60_000)
    server = await asyncio.get_running_loop().create_server(lambda: _Protocol(batcher), "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(Path(sys.argv[1]), int(sys.argv[2])))
