"""The async engine and session factory, built from `database.url`.

SQLite (aiosqlite) gets WAL journaling, a busy timeout and enforced foreign keys on every
connection; Postgres goes through asyncpg. Everything else talks to the store through a
`Database` and the repositories in `app.db.repos`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.config import DatabaseSettings

log = logging.getLogger(__name__)

# How long a SQLite writer waits for another writer's lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 5000


@dataclass
class Database:
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]

    @property
    def url(self) -> URL:
        return self.engine.url

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session for reads; call `commit()` yourself when writing."""
        async with self.sessionmaker() as s:
            yield s

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session that commits on success and rolls back on error."""
        async with self.sessionmaker() as s, s.begin():
            yield s

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        # WAL + NORMAL is durable across application crashes; only an OS crash can lose the
        # last transactions, which is the usual trade for a voice server's write rate.
        cur.execute("PRAGMA synchronous=NORMAL")
    finally:
        cur.close()


def _ensure_sqlite_dir(url: URL) -> None:
    db = url.database
    if db and db != ":memory:" and not db.startswith("file:"):
        Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)


def create_engine(url: str | URL, *, echo: bool = False, pool_size: int = 10) -> AsyncEngine:
    u = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo}
    if u.get_backend_name() == "sqlite":
        _ensure_sqlite_dir(u)
        engine = create_async_engine(u, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.update(pool_size=pool_size, pool_pre_ping=True)
    return create_async_engine(u, **kwargs)


def open_database(settings: DatabaseSettings) -> Database:
    """Build the engine and session factory (no connection is made until first use)."""
    engine = create_engine(settings.url, echo=settings.echo, pool_size=settings.pool_size)
    maker = async_sessionmaker(engine, expire_on_commit=False)
    log.info("database: %s", engine.url.render_as_string(hide_password=True))
    return Database(engine=engine, sessionmaker=maker)
