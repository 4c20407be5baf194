"""Model files through a real MLflow tracking server's artifact proxy: a version registered from one
VLMOPS_HOME is loaded from another that shares nothing but the server; experiments left by earlier
releases under a file:// root are refused with the fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infra.errors import Misconfigured
from registry.families.clip import ClipModel
from registry.store import EXPERIMENT, RegistryStore
from tests.conftest import make_settings, postgres_database
from tests.servers import mlflow_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-server")
    for db in postgres_database():
        with mlflow_server(db, root / "artifacts", root / "mlflow.log") as url:
            yield url


def test_a_version_registered_on_one_home_loads_on_another(tracking: str, tmp_path: Path) -> None:
    laptop = RegistryStore.from_settings(make_settings(tmp_path / "laptop", mlflow_tracking_uri=tracking))
    model = ClipModel.from_pretrained("vlmops-toy-clip", seed=3)
    info = laptop.register("moved-clip", model)
    assert info.source.startswith("mlflow-artifacts:/"), info.source
    pod = RegistryStore.from_settings(make_settings(tmp_path / "pod", mlflow_tracking_uri=tracking))
    loaded = pod.load(pod.get("moved-clip", info.version))
    assert isinstance(loaded, ClipModel)
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    np.testing.assert_allclose(loaded.encode_images([image]), model.encode_images([image]), atol=1e-6)
    assert not any((tmp_path / "laptop").rglob("*.safetensors")), "the laptop kept the files it registered"


def test_an_experiment_with_a_file_root_is_refused_with_the_fix(tracking: str, tmp_path: Path) -> None:
    old = RegistryStore.from_settings(make_settings(tmp_path / "old", mlflow_tracking_uri=tracking))
    old.client.create_experiment("stale-exp", artifact_location=(tmp_path / "old" / "mlartifacts").as_uri())
    with pytest.raises(Misconfigured, match=r"keeps its artifacts at file://.*mlflow experiments rename"):
        old.experiment_id("stale-exp")
    # renamed as the message says, the experiment is created anew on the artifact proxy
    exp = old.client.get_experiment_by_name("stale-exp")
    old.client.rename_experiment(exp.experiment_id, "stale-exp-local")
    new_id = old.experiment_id("stale-exp")
    assert old.client.get_experiment(new_id).artifact_location.startswith("mlflow-artifacts:")
    assert old.experiment_id(EXPERIMENT)  # the registry's own experiment is fine


def test_a_version_logged_to_another_machines_folder_says_so(tmp_path: Path) -> None:
    """An earlier release registered with file:// artifacts on node A; node B reads the same database."""
    import shutil

    node_a = RegistryStore.from_settings(make_settings(tmp_path / "a"))
    info = node_a.register("elsewhere", ClipModel.from_pretrained("vlmops-toy-clip", seed=4))
    shutil.rmtree(tmp_path / "a" / "mlartifacts")  # not on node B's disk
    node_b = RegistryStore.from_settings(make_settings(tmp_path / "b", mlflow_tracking_uri=node_a.tracking_uri))
    with pytest.raises(Misconfigured, match="a folder this machine does not have.*VLMOPS_ARTIFACT_ROOT"):
        node_b.download(node_b.get("elsewhere", info.version))


def test_an_artifact_root_holds_the_files_of_every_new_experiment(tmp_path: Path) -> None:
    """VLMOPS_ARTIFACT_ROOT (a shared volume here; s3:// alike): files land there, not under the home."""
    shared = (tmp_path / "bucket").as_uri()
    db = f"sqlite:///{tmp_path / 'registry.db'}"
    writer = RegistryStore.from_settings(make_settings(tmp_path / "w", mlflow_tracking_uri=db, artifact_root=shared))
    info = writer.register("rooted", ClipModel.from_pretrained("vlmops-toy-clip", seed=5))
    assert info.source.startswith(shared) and not (tmp_path / "w" / "mlartifacts").exists()
    reader = RegistryStore.from_settings(make_settings(tmp_path / "r", mlflow_tracking_uri=db, artifact_root=shared))
    assert isinstance(reader.load(reader.get("rooted", info.version)), ClipModel)
    elsewhere = (tmp_path / "other-bucket").as_uri()
    moved = RegistryStore.from_settings(make_settings(tmp_path / "m", mlflow_tracking_uri=db, artifact_root=elsewhere))
    with pytest.raises(Misconfigured, match=f"not under VLMOPS_ARTIFACT_ROOT={elsewhere}"):
        moved.experiment_id()
