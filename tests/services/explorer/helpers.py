"""The explorer tests' world: the platform under test, and what a page is checked with."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from infra.images import encode_png, to_base64
from infra.toyworld import Split, ToyWorld
from registry.datasets import load_pairs, write_toy_dataset
from registry.families.clip import ClipModel
from registry.gate import evaluate_versions
from registry.store import RegistryStore
from tests.conftest import make_settings
from tests.registry.test_hf_families import tiny

CHROMIUM = Path(os.environ.get("VLMOPS_CHROMIUM", "/usr/bin/chromium"))
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SERVICES = ["embedding", "search", "captioning", "vqa", "grounding", "explorer"]
PER_CLASS = 3  # images of each of the 24 toy classes in the collection
WORLD = ToyWorld()


@dataclass
class Platform:
    urls: dict[str, str]
    key: str  # an admin key
    home: Path
    ids: dict[str, str]  # item id -> its class label

    @property
    def page(self) -> str:
        return f"{self.urls['explorer']}/explorer/"

    def post(self, service: str, route: str, body: dict[str, Any], key: str | None = "") -> httpx.Response:
        headers = {"authorization": f"Bearer {self.key if key == '' else key}"} if key is not None else {}
        return httpx.post(f"{self.urls[service]}{route}", json=body, headers=headers, timeout=120)


def free_block(n: int) -> int:
    """A first port with ``n`` free consecutive ports after it (``vlmops up`` takes consecutive ports)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + n > 65000:
            continue
        try:
            held = []
            for p in range(base, base + n):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError("no block of free ports")


def png_b64(image: Image.Image) -> str:
    return to_base64(encode_png(image))


def single(index: int, split: Split = Split.TEST) -> Any:
    return WORLD.sample(index, split, n_objects=1)


def register_models(home: Path, toy: ClipModel) -> RegistryStore:
    store = RegistryStore.from_settings(make_settings(home))
    store.promote("vlmops-clip", store.register("vlmops-clip", toy).version, reason="the trained toy CLIP")
    store.register("vlmops-clip", ClipModel.from_pretrained("vlmops-toy-clip", seed=7))  # v2: the candidate
    for family, name in (("git-caption", "tiny-captioner"), ("vilt-vqa", "tiny-vqa"), ("owlvit", "tiny-grounder")):
        store.promote(name, store.register(name, tiny(family, home / "build" / family)).version)
    # both CLIP versions scored per class on a labelled toy set: the registry view's table
    data = load_pairs(write_toy_dataset(home / "eval", 96, split=Split.TEST, captions=False), require_captions=False)
    evaluate_versions(store, make_settings(home), [store.get("vlmops-clip", "2"), store.get("vlmops-clip", "1")], data)
    return store


def shot(pg: Any, path: Path) -> Path:
    """A screenshot, checked not blank: many colours, and not one flat tone."""
    pg.screenshot(path=str(path), full_page=True)
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, f"{path} looks blank"
    return path


def cards(pg: Any, where: str = "#results") -> list[dict[str, str]]:
    return pg.eval_on_selector_all(
        f"{where} figure.card",
        "els => els.map(e => ({id: e.dataset.id, version: e.dataset.version, "
        "payload: e.querySelector('.payload').textContent}))",
    )


def wait_thumbnails(pg: Any, where: str = "#results") -> None:
    pg.wait_for_function(
        f"[...document.querySelectorAll('{where} figure.card img')].every(i => i.complete && i.naturalWidth > 0)"
    )


def upload(pg: Any, selector: str, image: Image.Image | bytes, name: str = "image.png") -> None:
    data = image if isinstance(image, bytes) else encode_png(image)
    pg.set_input_files(selector, files=[{"name": name, "mimeType": "image/png", "buffer": data}])
