"""Where an item's time goes in ingest and reindex: each stage alone, per item, on one page size.

    python -m bench.pipeline_stages [--arch vlmops-toy-clip] [--n 4096] [--page 64]

In process, no server: each stage the bulk paths run, timed alone over the same ``n`` JPEG toy images, as
microseconds per item and as a share of the model's own forward. The stages are those of the issue's list:
decoding, base64 and JSON of images and vectors, blob writes and reads, the model (decode + preprocess +
forward, what ``bench.pipeline`` calls raw), Qdrant Edge upserts per page (each waits for the write) and
the catalog's page read. An HTTP round trip is timed against a minimal local server, so it is the cost of
a call, not of a service's work.
"""

from __future__ import annotations

import argparse
import base64
import json
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.embedding import jpeg, write_results
from infra.blobs import BlobStore
from infra.images import decode_image
from infra.toyworld import Split, ToyWorld
from infra.vector_index import IndexPoint, point_id
from infra.vector_index.edge import EdgeIndex
from registry.families.clip import ClipModel

LIMIT = {"max_bytes": 1 << 24, "max_pixels": 1 << 26}


class _Echo(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))  # the body is read, as a service would
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


def timed(fn: Callable[[], object], repeat: int = 2) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="vlmops-toy-clip")
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--page", type=int, default=64)
    args = parser.parse_args()
    n, page = args.n, args.page
    model = ClipModel.from_pretrained(args.arch, seed=0)
    size = model.image_size
    blobs = [jpeg(s.image.resize((size, size))) for s in ToyWorld().samples(n, Split.TEST)]
    pages = [blobs[i : i + page] for i in range(0, n, page)]
    vectors = [model.encode_images([decode_image(b, **LIMIT) for b in p]).numpy() for p in pages]
    dim = vectors[0].shape[1]
    stages: dict[str, float] = {}

    stages["decode (validate)"] = timed(lambda: [decode_image(b, **LIMIT) for b in blobs])
    stages["model: decode + preprocess + forward"] = timed(
        lambda: [model.encode_images([decode_image(b, **LIMIT) for b in p]) for p in pages]
    )
    b64 = [[base64.b64encode(b).decode() for b in p] for p in pages]
    stages["base64 + JSON of images, encode + parse"] = timed(
        lambda: [json.loads(json.dumps({"items": [{"image": s} for s in p]})) for p in b64]
    )
    stages["vectors as JSON lists, encode + parse"] = timed(
        lambda: [json.loads(json.dumps(v.tolist())) for v in vectors]
    )
    stages["vectors as one base64 buffer per page"] = timed(
        lambda: [np.frombuffer(base64.b64decode(base64.b64encode(v.astype("<f4").tobytes())), "<f4") for v in vectors]
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = BlobStore(str(Path(tmp) / "blobs"))
        t0 = time.perf_counter()
        keys = [store.put(b) for b in blobs]
        stages["blob write (new)"] = time.perf_counter() - t0
        stages["blob write (already stored)"] = timed(lambda: [store.put(b) for b in blobs], 1)
        stages["blob read"] = timed(lambda: [store.get(k) for k in keys])

        index = EdgeIndex(Path(tmp) / "index")
        points = [
            [IndexPoint(point_id(k), vec.tolist(), {"blob": k}) for k, vec in zip(keys[i : i + page], v, strict=True)]
            for i, v in zip(range(0, n, page), vectors, strict=True)
        ]

        def upsert(target: str, chunk: int) -> None:
            index.create(target, dim)
            flat = [p for ps in points for p in ps]
            for i in range(0, len(flat), chunk):
                index.upsert(target, flat[i : i + chunk])
            index.drop(target)

        stages[f"index upsert, {page} per call"] = timed(lambda: upsert("bench-a", page), 1)
        stages["index upsert, 1024 per call"] = timed(lambda: upsert("bench-b", 1024), 1)
        index.create("bench-c", dim)
        index.upsert("bench-c", [p for ps in points for p in ps])

        def scan() -> None:
            cursor: str | None = None
            while True:
                _, cursor = index.page("bench-c", cursor, page, with_vectors=False)
                if cursor is None:
                    return

        stages[f"index page read (items to re-embed), {page} per call"] = timed(scan)
        index.close()

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    with httpx.Client() as http:
        body = json.dumps({"items": [{"image": s} for s in b64[0]]}).encode()
        stages[f"HTTP round trip, one per page of {page} images"] = timed(
            lambda: [http.post(url, content=body) for _ in pages]
        )
    server.shutdown()

    model_s = stages["model: decode + preprocess + forward"]
    print(f"{args.arch}, {n} items, pages of {page}: the model alone runs at {n / model_s:,.0f} items/s\n")
    print(f"{'stage':<56}{'µs/item':>10}{'of model':>10}")
    for name, seconds in stages.items():
        print(f"{name:<56}{1e6 * seconds / n:>10.1f}{seconds / model_s:>10.2f}")
    write_results(
        f"pipeline_stages-{args.arch}",
        {"arch": args.arch, "n": n, "page": page, "us_per_item": {k: 1e6 * v / n for k, v in stages.items()}},
    )


if __name__ == "__main__":
    main()
