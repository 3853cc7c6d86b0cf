"""Migrations and models agree, and the revision chain goes up and down cleanly."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from app.config import DatabaseSettings
from app.db import migrate
from app.db.engine import Database, open_database
from app.db.models import Base


def _diff(conn: Connection) -> list[object]:
    ctx = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(ctx, Base.metadata))


async def _tables(db: Database) -> set[str]:
    async with db.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_autogenerate_finds_no_difference(database: Database):
    assert await migrate.current_revision(database) == migrate.head_revision()
    async with database.engine.connect() as conn:
        assert await conn.run_sync(_diff) == []


async def test_upgrade_downgrade_upgrade(blank_database_url: str):
    from alembic import command

    db = open_database(DatabaseSettings(url=blank_database_url))
    try:
        assert await migrate.current_revision(db) is None
        before, after = await migrate.upgrade(db)
        assert (before, after) == (None, migrate.head_revision())
        expected = {t.name for t in Base.metadata.sorted_tables} | {"alembic_version"}
        assert await _tables(db) == expected
        # Running it again is a no-op.
        assert await migrate.upgrade(db) == (after, after)

        cfg = migrate.alembic_config()

        def down(conn: Connection) -> None:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "base")

        async with db.engine.begin() as conn:
            await conn.run_sync(down)
        assert await _tables(db) == {"alembic_version"}
        await migrate.upgrade(db)
        async with db.engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await db.dispose()


def test_migrations_found_outside_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert migrate.head_revision() == "0002"
    assert (migrate.MIGRATIONS_DIR / "alembic.ini").is_file()


async def test_concurrent_start_migrates_once(blank_database_url: str):
    import asyncio

    dbs = [open_database(DatabaseSettings(url=blank_database_url)) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate.upgrade(db) for db in dbs),
                                       return_exceptions=True)
    finally:
        for db in dbs:
            await db.dispose()
    head = migrate.head_revision()
    assert sorted(results, key=str) == sorted([(None, head), (head, head), (head, head)],
                                              key=str)
    db = open_database(DatabaseSettings(url=blank_database_url))
    try:
        assert await migrate.current_revision(db) == head
    finally:
        await db.dispose()
