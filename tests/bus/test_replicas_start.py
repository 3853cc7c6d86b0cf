"""Replicas starting together on a fresh database."""

from __future__ import annotations

import asyncio

from app.config import DatabaseSettings
from app.db.engine import open_database
from app.db.repos import agents as agents_repo
from app.demo_agent import ensure_demo_agent


async def test_demo_agent_is_created_once_by_replicas_starting_together(
        database_url: str) -> None:
    dbs = [open_database(DatabaseSettings(url=database_url)) for _ in range(3)]
    try:
        created = await asyncio.gather(*(ensure_demo_agent(db) for db in dbs))
        async with dbs[0].session() as s:
            assert await agents_repo.count(s) == 1
    finally:
        for db in dbs:
            await db.dispose()
    assert created.count(True) == 1
