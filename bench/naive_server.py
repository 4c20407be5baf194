"""The server a user would otherwise write: FastAPI calling the model once per request, no batching.

A peer in ``make bench`` only (not part of the platform). Same request and response shapes as the
embedding service, so the same load generator drives both.

    python -m bench.naive_server MODEL_DIR PORT
"""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI
from PIL import Image

from infra.settings import resolve_device, resolve_precision
from registry.families.clip import ClipModel


def build_app(model_dir: Path) -> FastAPI:
    device = resolve_device("auto")  # the same device and precision as the service, for a fair peer
    model = ClipModel.load(model_dir, device=device)
    model.configure_runtime(resolve_precision("auto", device))
    app = FastAPI()

    def rows(vectors: torch.Tensor) -> list[dict[str, Any]]:
        return [{"vector": v, "dim": len(v)} for v in vectors.tolist()]

    @app.post("/embed_text")
    def embed_text(body: dict[str, Any]) -> list[dict[str, Any]]:
        texts = [item["text"] for item in body["items"]]
        tokens = model.tokenize(texts, cut=False).tokens  # open_clip's default: pad to the full context
        return rows(model.encode_tokens(tokens))

    @app.post("/embed_image")
    def embed_image(body: dict[str, Any]) -> list[dict[str, Any]]:
        images = [Image.open(io.BytesIO(base64.b64decode(item["image"]))).convert("RGB") for item in body["items"]]
        return rows(model.encode_images(images))

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ok"}

    return app


if __name__ == "__main__":
    uvicorn.run(build_app(Path(sys.argv[1])), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
