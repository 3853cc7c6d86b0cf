"""Run Alembic migrations programmatically (server start, `phonebooth migrate`, tests)."""

from __future__ import annotations

import asyncio
import fcntl
import importlib.util
import logging
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from app.db.engine import Database

log = logging.getLogger(__name__)

# Arbitrary constant naming Phonebooth's migration lock among Postgres advisory locks.
MIGRATION_LOCK_ID = 0x50484F4E45  # "PHONE"



def _migrations_dir() -> Path:
    """Where the installed `migrations` package (Alembic's scripts) lives. Found, not imported:
    its env.py imports the models, so the scripts sit above the database layer, not below it.
    The search locations (not __file__) also work when an old editable install maps it as a
    namespace package."""
    spec = importlib.util.find_spec("migrations")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the migrations package is not installed beside app")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


MIGRATIONS_DIR = _migrations_dir()


def alembic_config(database_url: str | None = None) -> Config:
    """The Alembic config shipped inside the package, usable from any working directory."""
    cfg = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # The service configures logging itself; don't let the ini's fileConfig replace it.
    cfg.attributes["skip_logging_config"] = True
    if database_url:
        cfg.attributes["database_url"] = database_url
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _current(conn: Connection) -> str | None:
    # Reading the revision is not news; keep alembic's "Context impl ..." line out of the log.
    mlog = logging.getLogger("alembic.runtime.migration")
    level = mlog.level
    mlog.setLevel(logging.WARNING)
    try:
        return MigrationContext.configure(conn).get_current_revision()
    finally:
        mlog.setLevel(level)


async def current_revision(db: Database) -> str | None:
    async with db.engine.connect() as conn:
        return await conn.run_sync(_current)


# Alembic keeps its running context in module globals, so upgrades in one process must not
# interleave; one lock per event loop (tests run several loops).
_loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _process_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _loop_locks.get(loop)
    if lock is None:
        lock = _loop_locks[loop] = asyncio.Lock()
    return lock


@asynccontextmanager
async def _sqlite_file_lock(db: Database) -> AsyncIterator[None]:
    """Serialise migrations of one SQLite file across processes (server + `phonebooth
    migrate`); SQLite DDL here is not transactional, so two runs could collide."""
    path = db.url.database
    if not db.is_sqlite or not path or path == ":memory:" or path.startswith("file:"):
        yield
        return
    with open(f"{path}.migrate-lock", "a+") as f:  # noqa: ASYNC230 - tiny, local, at start-up
        await asyncio.to_thread(fcntl.flock, f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


async def upgrade(db: Database, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade the database to `revision`; returns (before, after) revision ids.

    Safe to run concurrently: in one process, across processes on one SQLite file, and across
    replicas on one Postgres (advisory lock)."""
    async with _process_lock(), _sqlite_file_lock(db):
        return await _upgrade(db, revision)


async def _upgrade(db: Database, revision: str) -> tuple[str | None, str | None]:
    cfg = alembic_config()

    def _run(conn: Connection) -> tuple[str | None, str | None]:
        if conn.dialect.name == "postgresql":
            # Replicas starting together on one Postgres: one migrates, the others wait here
            # (held until this transaction commits) and then find nothing to do.
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_ID})
        before = _current(conn)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        return before, _current(conn)

    async with db.engine.begin() as conn:
        before, after = await conn.run_sync(_run)
    if before != after:
        log.info("database migrated from %s to %s", before or "empty", after)
    return before, after
