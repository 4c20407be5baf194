"""The collection catalog's tables in SQL: PostgreSQL in a cluster (``VLMOPS_CATALOG_URL``), SQLite
under ``VLMOPS_HOME`` by default.

It holds the collections (model, the live physical collection and its version, a running build),
every physical collection that exists for them (retired ones with the time they were retired), and
the reindex jobs the reconciler keeps track of. Several search replicas and the workers share it.

Races between ingest and the alias swap are closed here: ``locked(name, exclusive=False)`` holds a
shared row lock on the collection while an ingest writes to its targets, and the swap (and the start
of a build) takes the exclusive one, so an ingest sees either the targets before the swap or after
it, never a mix. PostgreSQL gives row locks (``FOR SHARE`` / ``FOR UPDATE``); SQLite has one lock per
database, so there every locked section is ``BEGIN IMMEDIATE`` (one writer at a time; plain reads go
through a second engine and are not blocked, WAL).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError

from infra.errors import Conflict, NotFound

log = logging.getLogger(__name__)

metadata = MetaData()
collections = Table(
    "vlmops_collections",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("model", String(250), nullable=False),
    Column("dim", Integer, nullable=False),
    Column("keyword_fields", JSON, nullable=False),
    Column("live_physical", String(400), nullable=False),
    Column("live_version", String(32), nullable=False),
    Column("build_physical", String(400)),
    Column("build_version", String(32)),
    Column("build_started_at", Float),
    Column("created_at", Float, nullable=False),
)
physicals = Table(
    "vlmops_physical_collections",
    metadata,
    Column("physical", String(400), primary_key=True),
    Column("collection", String(63), nullable=False, index=True),
    Column("version", String(32), nullable=False),
    Column("retired_at", Float),
)
reindex_jobs = Table(
    "vlmops_reindex_jobs",
    metadata,
    Column("collection", String(63), primary_key=True),
    Column("version", String(32), nullable=False),
    Column("task_id", String(64)),
    Column("state", String(16), nullable=False),  # queued | running | failed | succeeded
    Column("failures", Integer, nullable=False),  # consecutive failed attempts
    Column("next_attempt_at", Float),
    Column("error", Text),
    Column("updated_at", Float, nullable=False),
)

ACTIVE = ("queued", "running")


@dataclass(frozen=True)
class CollectionRow:
    name: str
    model: str
    dim: int
    keyword_fields: list[str]
    live_physical: str
    live_version: str
    build_physical: str | None = None
    build_version: str | None = None
    build_started_at: float | None = None
    created_at: float = 0.0

    @property
    def targets(self) -> list[tuple[str, str]]:
        """(physical, version) an ingest writes to: the live collection, and the staging one of a build."""
        live = [(self.live_physical, self.live_version)]
        return (
            live + [(self.build_physical, self.build_version)] if self.build_physical and self.build_version else live
        )


@dataclass(frozen=True)
class JobRow:
    collection: str
    version: str
    state: str
    task_id: str | None = None
    failures: int = 0
    next_attempt_at: float | None = None
    error: str | None = None
    updated_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalise_url(url: str) -> str:
    """``postgresql://`` (and ``postgres://``) through psycopg 3, the driver vlmops installs."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def _sqlite_engine(url: str, begin: str) -> Engine:
    engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)

    return engine


class CatalogDB:
    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        parsed = make_url(self.url)
        self.sqlite = parsed.get_backend_name() == "sqlite"
        if self.sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = _sqlite_engine(self.url, "BEGIN IMMEDIATE")
            self.reader = _sqlite_engine(self.url, "BEGIN")
        else:
            self.engine = self.reader = create_engine(self.url, pool_pre_ping=True, pool_size=10, max_overflow=20)
        self._create_tables()

    def _create_tables(self) -> None:
        for attempt in range(3):  # replicas starting together race to create the tables
            try:
                metadata.create_all(self.engine)
                return
            except (IntegrityError, DBAPIError):
                if attempt == 2:
                    raise
                time.sleep(0.2)

    def close(self) -> None:
        self.engine.dispose()
        self.reader.dispose()

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def locked(self, name: str, exclusive: bool) -> Iterator[tuple[Connection, CollectionRow]]:
        """A transaction holding a shared (``exclusive=False``) or exclusive lock on the collection's row."""
        with self.engine.begin() as conn:
            query = select(collections).where(collections.c.name == name)
            if not self.sqlite:
                query = query.with_for_update(read=not exclusive)
            row = conn.execute(query).mappings().first()
            if row is None:
                raise NotFound(f"no collection {name!r}")
            yield conn, CollectionRow(**row)

    # ------------------------------------------------------------------ collections
    def get(self, name: str) -> CollectionRow | None:
        with self.reader.connect() as conn:
            row = conn.execute(select(collections).where(collections.c.name == name)).mappings().first()
        return None if row is None else CollectionRow(**row)

    def all(self) -> list[CollectionRow]:
        with self.reader.connect() as conn:
            rows = conn.execute(select(collections).order_by(collections.c.name)).mappings().all()
        return [CollectionRow(**r) for r in rows]

    def insert(self, conn: Connection, row: CollectionRow) -> None:
        try:
            with conn.begin_nested():
                conn.execute(insert(collections).values(**row.__dict__))
        except IntegrityError as exc:
            raise Conflict(f"collection {row.name!r} exists") from exc
        self.add_physical(conn, row.live_physical, row.name, row.live_version)

    def update(self, conn: Connection, name: str, **values: Any) -> None:
        conn.execute(update(collections).where(collections.c.name == name).values(**values))

    def remove(self, conn: Connection, name: str) -> list[str]:
        """Delete the collection's rows; returns its physical collections (to drop after commit)."""
        found = conn.execute(select(physicals.c.physical).where(physicals.c.collection == name)).scalars().all()
        conn.execute(delete(physicals).where(physicals.c.collection == name))
        conn.execute(delete(collections).where(collections.c.name == name))
        conn.execute(delete(reindex_jobs).where(reindex_jobs.c.collection == name))
        return list(found)

    # ------------------------------------------------------------------ physical collections
    def add_physical(self, conn: Connection, physical: str, collection: str, version: str) -> None:
        conn.execute(delete(physicals).where(physicals.c.physical == physical))
        conn.execute(insert(physicals).values(physical=physical, collection=collection, version=version))

    def retire(self, conn: Connection, physical: str, at: float) -> None:
        conn.execute(update(physicals).where(physicals.c.physical == physical).values(retired_at=at))

    def forget_physical(self, conn: Connection, physical: str) -> None:
        conn.execute(delete(physicals).where(physicals.c.physical == physical))

    def retired_before(self, conn: Connection, at: float) -> list[str]:
        """Retired physical collections due to be dropped, locked for this transaction (another
        replica's janitor skips them)."""
        query = select(physicals.c.physical).where(physicals.c.retired_at.is_not(None), physicals.c.retired_at <= at)
        if not self.sqlite:
            query = query.with_for_update(skip_locked=True)
        return list(conn.execute(query).scalars().all())

    def physical_rows(self) -> list[dict[str, Any]]:
        with self.reader.connect() as conn:
            return [dict(r) for r in conn.execute(select(physicals)).mappings().all()]

    # ------------------------------------------------------------------ reindex jobs
    def job(self, collection: str, conn: Connection | None = None) -> JobRow | None:
        query = select(reindex_jobs).where(reindex_jobs.c.collection == collection)
        if conn is not None:
            row = conn.execute(query).mappings().first()
        else:
            with self.reader.connect() as c:
                row = c.execute(query).mappings().first()
        return None if row is None else JobRow(**row)

    def jobs(self) -> dict[str, JobRow]:
        with self.reader.connect() as conn:
            rows = conn.execute(select(reindex_jobs)).mappings().all()
        return {r["collection"]: JobRow(**r) for r in rows}

    def put_job(self, conn: Connection, job: JobRow) -> None:
        values = job.as_dict()
        done = conn.execute(
            update(reindex_jobs).where(reindex_jobs.c.collection == job.collection).values(**values)
        ).rowcount
        if not done:
            conn.execute(insert(reindex_jobs).values(**values))

    def set_job(self, collection: str, **values: Any) -> JobRow | None:
        """Update the job row of ``collection`` in a transaction of its own (collection row locked)."""
        try:
            with self.locked(collection, exclusive=True) as (conn, _):
                job = self.job(collection, conn)
                if job is None:
                    return None
                new = JobRow(**{**job.as_dict(), **values, "updated_at": time.time()})
                self.put_job(conn, new)
                return new
        except NotFound:  # the collection was deleted meanwhile: its job goes with it
            return None
