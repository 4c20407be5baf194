"""Shared fixtures: the trained toy CLIP (trained once, cached under ./.vlmops), registries, services."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# The suite's processes (services, workers, the background training, this one) compute on one thread: torch's
# OpenMP teams of two threads on 2 cores stall whenever another process is busy (measured: the killed-finetune
# test took 125 s beside the background training, 27 s with its worker on one thread, as fast as alone). Set
# before torch is imported; a test that needs OpenMP teams sets its own count (tests/infra/test_threads.py).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from infra.settings import Settings  # noqa: E402
from registry.families.clip import ClipModel  # noqa: E402
from registry.families.hf import HFModel  # noqa: E402
from registry.store import RegistryStore  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def toy_clip() -> tuple[ClipModel, dict[str, float]]:
    """The trained toy CLIP: from the demo's cache when present, else trained now (about 2 minutes)."""
    from services.demo import ensure_toy_clip

    return ensure_toy_clip(Settings(home=REPO / ".vlmops"))


@pytest.fixture(scope="session")
def toy_tasks(toy_clip: tuple[ClipModel, dict[str, float]]) -> dict[str, tuple[HFModel, dict[str, float]]]:
    """The three toy task models (captioning, VQA, grounding) with their held-out figures: from the cache, or
    from the background training this session started (waited for), or trained now."""
    from registry.toy_tasks import TASKS, ensure_toy_task

    return {task: ensure_toy_task(Settings(home=REPO / ".vlmops"), task, toy_clip[0]) for task in TASKS}


_PREPARE: subprocess.Popen[bytes] | None = None


def pytest_sessionstart(session: pytest.Session) -> None:
    """Train the toy models in a background process while the tests run: the toy CLIP first, then the task
    models, two at a time; the fixtures above wait for what they need (a file lock per model). Each trainer
    computes on one thread, at the suite's priority: the training is what the suite's last part waits for
    (measured: at low priority and one model at a time, the last model was ready 22.7 minutes in)."""
    global _PREPARE
    from services.demo_tasks import start_training

    if os.environ.get("VLMOPS_TEST_PREPARE", "1") == "0":
        return
    home = REPO / ".vlmops"
    _PREPARE = start_training(home, home / "prepare.log", jobs=2)


def _training_rank(items: list[pytest.Item]) -> dict[Path, int]:
    """Per test module: 0 if none of its tests needs a toy model, 1 if one needs the toy CLIP, 2 if one needs
    the toy task models (a whole module moves, so that its module-scoped fixtures are set up once)."""
    rank: dict[Path, int] = {}
    for item in items:
        names = getattr(item, "fixturenames", ())
        need = 2 if "toy_tasks" in names else 1 if "toy_clip" in names else 0
        rank[item.path] = max(rank.get(item.path, 0), need)
    return rank


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests that need no toy model run first, then those of the toy CLIP, then those of the toy task
    models: the background training (started as the session begins) overlaps the suite instead of holding it
    up."""
    rank = _training_rank(items)
    items.sort(key=lambda item: rank[item.path])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from infra.process import terminate_group

    terminate_group(_PREPARE, 30)


@pytest.fixture()
def random_clip() -> ClipModel:
    return ClipModel.from_pretrained("vlmops-toy-clip", seed=1)


def make_settings(home: Path, **env: object) -> Settings:
    return Settings(home=home, **env)  # type: ignore[arg-type]


@pytest.fixture()
def sqlite_store(tmp_path: Path) -> RegistryStore:
    return RegistryStore.from_settings(make_settings(tmp_path / "home"))


def ensure_postgres() -> None:
    """PostgreSQL runs on every machine of this project; start the local cluster if it is down (it is
    then left running, as the machine had it)."""
    import psycopg

    try:
        psycopg.connect(POSTGRES_ADMIN, connect_timeout=3).close()
        return
    except psycopg.OperationalError:
        pass
    if shutil.which("pg_ctlcluster") and shutil.which("pg_lsclusters"):
        for line in subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout.splitlines():
            version, cluster = line.split()[:2]
            subprocess.run(["pg_ctlcluster", version, cluster, "start"], check=False)
    elif shutil.which("service"):
        subprocess.run(["service", "postgresql", "start"], check=False)
    for _ in range(50):
        try:
            psycopg.connect(POSTGRES_ADMIN, connect_timeout=3).close()
            return
        except psycopg.OperationalError:
            time.sleep(0.2)


def postgres_database() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL (started if it is down), dropped afterwards."""
    import psycopg

    ensure_postgres()
    try:
        admin = psycopg.connect(POSTGRES_ADMIN, connect_timeout=3, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432 and could not be started: {exc}")
    name = f"vlmops_test_{uuid.uuid4().hex[:8]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RegistryStore]:
    """A registry on sqlite, and on the machine's PostgreSQL when it is reachable."""
    home = tmp_path / "home"
    if request.param == "sqlite":
        yield RegistryStore.from_settings(make_settings(home))
        return
    for uri in postgres_database():
        yield RegistryStore.from_settings(make_settings(home, mlflow_tracking_uri=uri))


@contextmanager
def search_stack(
    home: Path, model: ClipModel, name: str = "vlmops-clip", env: dict[str, str] | None = None
) -> Iterator[tuple[RegistryStore, str, str]]:
    """``model`` registered as production of ``name``; embedding and search services running on ``home``
    (with ``env`` besides). Yields (registry, embedding URL, search URL)."""
    from infra.process import ServiceProcess, running

    store = RegistryStore.from_settings(make_settings(home))
    store.promote(name, store.register(name, model).version)
    env = {"VLMOPS_HOME": str(home), "VLMOPS_EMBEDDING__MAX_LATENCY_MS": "10000", **(env or {})}
    emb = ServiceProcess("embedding", env=env, log_path=home / "embedding.log")
    search_env = env | {"VLMOPS_SEARCH__EMBEDDING_URL": emb.url}  # the search service calls it once ready
    with running(emb, ServiceProcess("search", env=search_env, log_path=home / "search.log")) as (emb, search):
        yield store, emb.url, search.url
