"""The five services behind keys, started once for the security tests."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from infra.auth import create_key
from infra.process import ServiceProcess
from registry.families.clip import ClipModel
from registry.store import RegistryStore
from tests.conftest import make_settings
from tests.registry.test_hf_families import tiny
from tests.services.security.helpers import (
    IMAGES,
    MAX_BODY,
    SERVICES,
    Stack,
)


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("secured")
    store = RegistryStore.from_settings(make_settings(home))
    models = {"vlmops-clip": ClipModel.from_pretrained("vlmops-toy-clip", seed=1)}
    models |= {f"tiny-{f}": tiny(f, home / "build") for f in ("blip-caption", "blip-vqa", "owlvit")}
    for name, model in models.items():
        store.promote(name, store.register(name, model).version)
    store.register("vlmops-clip", ClipModel.from_pretrained("vlmops-toy-clip", seed=2))  # version 2, to rebuild with
    made = {scope: create_key(f"{scope}-client", [scope]) for scope in ("read", "write", "admin")}
    search_key, search_entry = create_key("search-svc", ["read"])  # search → embedding, its own key
    lines = "\n".join([e.line() for _, e in made.values()] + [search_entry.line()])
    allowed, secret = home / "uploads", home / "secret"
    allowed.mkdir()
    secret.mkdir()
    (allowed / "ok.png").write_bytes(IMAGES[1])
    (secret / "private.png").write_bytes(IMAGES[2])
    os.symlink(secret / "private.png", allowed / "escape.png")
    audit = home / "audit.jsonl"
    (home / "keys.txt").write_text(lines)
    base = {
        "VLMOPS_HOME": str(home),
        "VLMOPS_AUTH__KEYS": lines,
        "VLMOPS_AUTH__AUDIT_LOG": str(audit),
        "VLMOPS_CAPTIONING__MODEL_NAME": "tiny-blip-caption",
        "VLMOPS_VQA__MODEL_NAME": "tiny-blip-vqa",
        "VLMOPS_GROUNDING__MODEL_NAME": "tiny-owlvit",
        "VLMOPS_SEARCH__INGEST_URI_PREFIXES": json.dumps([str(allowed)]),
        "VLMOPS_SEARCH__MAX_REQUEST_BYTES": str(MAX_BODY),
        "VLMOPS_EMBEDDING__MAX_REQUEST_BYTES": str(MAX_BODY),
    }
    procs = {n: ServiceProcess(n, env=base, log_path=home / f"{n}.log") for n in SERVICES if n != "search"}
    search_env = base | {"VLMOPS_SEARCH__EMBEDDING_URL": procs["embedding"].url, "VLMOPS_AUTH__KEY": search_key}
    procs["search"] = ServiceProcess("search", env=search_env, log_path=home / "search.log")
    ServiceProcess.start_together(list(procs.values()))
    try:
        yield Stack(
            {n: p.url for n, p in procs.items()},
            {s: k for s, (k, _) in made.items()},
            audit,
            allowed,
            secret,
            home,
            {n: p.grpc_target for n, p in procs.items()},
        )
    finally:
        for proc in procs.values():
            proc.stop()
