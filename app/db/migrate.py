"""Run Alembic migrations programmatically (server start, `phonebooth migrate`, tests)."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

import migrations
from app.db.engine import Database

log = logging.getLogger(__name__)

# __path__ (not __file__) also works when an old editable install maps it as a namespace.
MIGRATIONS_DIR = Path(next(iter(migrations.__path__))).resolve()


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
    return MigrationContext.configure(conn).get_current_revision()


async def current_revision(db: Database) -> str | None:
    async with db.engine.connect() as conn:
        return await conn.run_sync(_current)


async def upgrade(db: Database, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade the database to `revision`; returns (before, after) revision ids."""
    cfg = alembic_config()

    def _run(conn: Connection) -> tuple[str | None, str | None]:
        before = _current(conn)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        return before, _current(conn)

    async with db.engine.begin() as conn:
        before, after = await conn.run_sync(_run)
    if before != after:
        log.info("database migrated from %s to %s", before or "empty", after)
    return before, after
