from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infra.errors import InvalidInput, NotFound
from registry.families.clip import ClipModel
from registry.store import CANDIDATE, PRODUCTION, RegistryStore

NAME = "clip-test"


class TestRegistry:
    def test_register_promote_rollback(self, store: RegistryStore, random_clip: ClipModel) -> None:
        v1 = store.register(
            NAME, random_clip, tags={"dataset_hash": "d1", "base_version": "none"}, metrics={"acc": 0.5}
        )
        v2 = store.register(NAME, random_clip, tags={"dataset_hash": "d2", "base_version": v1.version})
        assert (v1.version, v2.version) == ("1", "2")
        assert v1.tags["family"] == "clip" and v1.tags["embed_dim"] == str(random_clip.embed_dim)
        assert v1.tags["dataset_hash"] == "d1" and v1.tags["metric.acc"] == "0.5"
        assert store.by_alias(NAME, CANDIDATE).version == "2"
        with pytest.raises(NotFound):
            store.resolve(f"{NAME}@{PRODUCTION}")

        store.promote(NAME, "1", reason="first")
        assert store.resolve(NAME).version == "1"
        event = store.promote(NAME, "2", reason="better")
        assert (event.previous, event.version) == ("1", "2")
        assert store.resolve(f"{NAME}@production").version == "2"
        assert CANDIDATE not in store.get(NAME, "2").aliases  # candidate moved on to production

        back = store.rollback(NAME, reason="regression")
        assert (back.previous, back.version) == ("2", "1")
        assert store.resolve(NAME).version == "1"
        actions = [(e.action, e.version, e.reason) for e in store.events(NAME)]
        assert actions == [("promote", "1", "first"), ("promote", "2", "better"), ("rollback", "1", "regression")]
        with pytest.raises(InvalidInput):  # nothing before version 1
            store.rollback(NAME)

    def test_loaded_version_gives_the_registered_embeddings(self, store: RegistryStore, random_clip: ClipModel) -> None:
        info = store.register(NAME, random_clip)
        loaded = store.load(store.resolve(f"{NAME}/{info.version}"))
        assert isinstance(loaded, ClipModel)
        assert torch.equal(loaded.encode_text(["a red circle"])[0], random_clip.encode_text(["a red circle"])[0])

    def test_unknown_names_and_versions(self, store: RegistryStore, random_clip: ClipModel) -> None:
        store.register(NAME, random_clip)
        with pytest.raises(NotFound):
            store.get(NAME, "9")
        with pytest.raises(NotFound):
            store.get(NAME, "latest")
        with pytest.raises(NotFound):
            store.resolve("nobody@production")
        with pytest.raises(NotFound):
            store.promote(NAME, "9")
        assert [v.version for v in store.versions(NAME)] == ["1"]


def test_processes_opening_one_new_embedded_registry_side_by_side_all_succeed(tmp_path: Path) -> None:
    """Services started together on a new home (``vlmops up``) each open its sqlite registry: MLflow creates
    the tables on first open, and four processes racing there failed three times in four before the lock."""
    home = tmp_path / "new-home"
    code = (
        "import sys; from infra.settings import Settings; from registry.store import RegistryStore;"
        "store = RegistryStore.from_settings(Settings(home=sys.argv[1])); print(store.model_names())"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(home)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    outs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, [err.decode()[-1500:] for _, err in outs]
    assert [out.decode().strip() for out, _ in outs] == ["[]"] * 4
