"""The explorer in a real browser (Debian's Chromium, driven by Playwright) against ``vlmops up`` on the toy
world, with API keys on: the trained toy CLIP as production (version 1) and an untrained one as candidate
(version 2) of the collection's model, tiny captioning / VQA / grounding models, a Celery worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.auth import create_key
from infra.toyworld import Split, class_labels
from registry.families.clip import ClipModel
from tests.services.explorer.helpers import (
    CHROMIUM,
    FLAGS,
    PER_CLASS,
    SERVICES,
    WORLD,
    Platform,
    free_block,
    png_b64,
    register_models,
)


@pytest.fixture(scope="package")
def platform(
    tmp_path_factory: pytest.TempPathFactory, toy_clip: tuple[ClipModel, dict[str, float]]
) -> Iterator[Platform]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install chromium)")
    home = tmp_path_factory.mktemp("explorer")
    register_models(home, toy_clip[0])
    key, entry = create_key("curator", ["admin"])
    base = free_block(len(SERVICES))
    env = {
        **os.environ,
        "VLMOPS_HOME": str(home),
        "VLMOPS_AUTH__KEYS": entry.line(),
        "VLMOPS_AUTH__KEY": key,  # the worker's and the search service's own calls
        "VLMOPS_CAPTIONING__MODEL_NAME": "tiny-captioner",
        "VLMOPS_VQA__MODEL_NAME": "tiny-vqa",
        "VLMOPS_GROUNDING__MODEL_NAME": "tiny-grounder",
        "VLMOPS_EMBEDDING__MAX_LATENCY_MS": "20000",
        "VLMOPS_AUTH__AUDIT_LOG": str(home / "audit.jsonl"),
    }
    cmd = [str(Path(sys.executable).with_name("vlmops")), "up", "--port", str(base), "--grpc-port", "0"]
    cmd += ["--services", ",".join(SERVICES)]
    log = (home / "up.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    urls = {name: f"http://127.0.0.1:{base + i}" for i, name in enumerate(SERVICES)}
    try:
        deadline = time.monotonic() + 300
        for name, url in urls.items():
            while True:
                assert proc.poll() is None, f"vlmops up exited: {(home / 'up.log').read_text()[-3000:]}"
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"{name} not ready; see {home}"
                time.sleep(0.5)
        plat = Platform(urls, key, home, {})
        assert plat.post("search", "/collections/create", {"name": "toy"}).status_code == 200
        items = []
        for i in range(400):
            s = WORLD.sample(i, Split.TRAIN, n_objects=1)
            if sum(1 for it in items if it[1] == s.label) < PER_CLASS:
                items.append((png_b64(s.image), s.label))
        assert len(items) == PER_CLASS * len(class_labels())
        for start in range(0, len(items), 24):
            page = items[start : start + 24]
            body = {"collection": "toy", "items": [{"image": im, "payload": {"label": lb}} for im, lb in page]}
            answer = plat.post("search", "/ingest", body)
            assert answer.status_code == 200, answer.text
            plat.ids.update(zip(answer.json()["ids"], [lb for _, lb in page], strict=True))
        yield plat
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="package")
def browser(platform: Platform) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser: Any, platform: Platform, tmp_path: Path) -> Iterator[Any]:
    """A page of the explorer with the key entered once through its dialog (kept in the tab's session)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(platform.page)
    pg.wait_for_selector("body[data-ready=true]")
    if not pg.evaluate("document.getElementById('key-dialog').open"):  # it opens itself at the first 401
        pg.click("#key-button")
    pg.fill("#key-input", platform.key)
    pg.click("#key-dialog button[value=save]")
    pg.wait_for_function("document.querySelectorAll('#collection option').length > 0")
    yield pg
    context.close()
    assert not errors, errors
