"""The outbox: call records wait out a database outage on local disk and land exactly once.

Real parts only: the outbox file (SQLite on disk), the event service, and real databases — a
migrated SQLite file, a second process holding SQLite's write lock, a private PostgreSQL
cluster stopped and started under the writer, and a Postgres address nobody listens on.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from app.config import DatabaseSettings, EventsSettings, OutboxSettings
from app.db import migrate
from app.db.engine import Database, open_database
from app.db.models import Session, ToolCallRecord, Turn, UsageRecord
from app.events.service import EventsService
from app.outbox.store import OutboxInUse
from tests.events.conftest import SIGNING_SECRET, call_events, make_session
from tests.pg_cluster import PG_MISSING, PrivateCluster

# Nothing listens on port 1: every connection is refused at once (a database that is away).
UNREACHABLE = "postgresql+asyncpg://pb@127.0.0.1:1/pb"
FAST_RETRY = OutboxSettings(retry_max_s=0.3)


async def _migrated(url: str) -> Database:
    db = open_database(DatabaseSettings(url=url))
    await migrate.upgrade(db)
    return db


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = await _migrated(f"sqlite+aiosqlite:///{tmp_path / 'phonebooth.db'}")
    yield db
    await db.dispose()


@pytest.fixture
async def service_factory(tmp_path: Path) -> AsyncIterator[Callable[..., EventsService]]:
    made: list[EventsService] = []

    def make(db: Database, path: Path | None = None, **outbox: Any) -> EventsService:
        settings = FAST_RETRY.model_copy(update=outbox)
        svc = EventsService(EventsSettings(), db.sessionmaker, SIGNING_SECRET,
                            outbox_settings=settings,
                            outbox_path=path or tmp_path / "outbox.db", poll_interval_s=0.1)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        await svc.stop(grace_s=1.0)


async def _until(cond: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _call_record(db: Database, sid: str) -> dict[str, Any]:
    """What the database holds for one session, as counts and values to compare exactly."""
    async with db.session() as s:
        row = await s.get(Session, sid)
        turns = list((await s.execute(
            select(Turn.role, Turn.text).where(Turn.session_id == sid).order_by(Turn.idx)
        )).all())
        tools = list((await s.execute(
            select(ToolCallRecord.id, ToolCallRecord.status)
            .where(ToolCallRecord.session_id == sid))).all())
        usage = (await s.execute(
            select(func.count(), func.sum(UsageRecord.quantity))
            .where(UsageRecord.session_id == sid))).one()
    assert row is not None
    return {"status": row.status, "end_reason": row.end_reason, "turns": turns,
            "tools": [t[1] for t in tools], "usage": (usage[0], usage[1])}


EXPECTED = {
    "status": "ended", "end_reason": "caller_hangup",
    "turns": [("assistant", "Hello!"), ("user", "what's the weather"),
              ("assistant", "It is 21 degrees."), ("user", "thanks bye"),
              ("assistant", "Goodbye!")],
    "tools": ["ok"], "usage": (3, 150.0 + 210.0 + 42.0),
}


async def test_replayed_records_are_written_once(
    sqlite_db: Database, service_factory: Callable[..., EventsService]
) -> None:
    """At-least-once replay: every record applied twice still gives one row of each."""
    svc = service_factory(sqlite_db)
    await svc.start()
    sid, agent_id = await make_session(sqlite_db)
    envs = [svc.publish(e) for e in call_events(sid, agent_id)]
    for env in envs:  # the same envelopes again, as a replay after a crash would bring them
        svc.outbox.put("event", sid, env.to_dict())
    await svc.flush()
    assert await _call_record(sqlite_db, sid) == EXPECTED
    assert svc.outbox.failed_total == 0 and svc.outbox.depth == 0


async def test_records_survive_a_restart_while_the_database_is_away(
    sqlite_db: Database, service_factory: Callable[..., EventsService], tmp_path: Path
) -> None:
    away = open_database(DatabaseSettings(url=UNREACHABLE))
    try:
        sid, agent_id = await make_session(sqlite_db)
        first = service_factory(away)
        await first.start()
        for e in call_events(sid, agent_id):
            first.publish(e)
        await _until(lambda: not first.outbox.db_up, 10, "the outage to be noticed")
        await first.stop(grace_s=0.5)  # the records stay in the file
        assert (tmp_path / "outbox.db").is_file()
    finally:
        await away.dispose()
    second = service_factory(sqlite_db)  # the next run, same outbox file, database back
    await second.start()
    await asyncio.wait_for(second.flush(), 30)
    assert await _call_record(sqlite_db, sid) == EXPECTED
    assert second.outbox.replayed_total == second.outbox.counters()["outbox_replayed_total"] > 0


LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


async def test_sqlite_locked_by_another_writer(
    sqlite_db: Database, service_factory: Callable[..., EventsService]
) -> None:
    """Another process holds SQLite's write lock longer than the busy timeout: the writer sees
    an outage, keeps the records, and writes each once when the lock goes."""
    sid, agent_id = await make_session(sqlite_db)
    svc = service_factory(sqlite_db)
    await svc.start()
    path = sqlite_db.url.database
    assert path
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, path, "8"],  # noqa: ASYNC220
                              stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout is not None
        assert (await asyncio.to_thread(locker.stdout.readline)).strip() == "locked"
        for e in call_events(sid, agent_id):
            svc.publish(e)
        await _until(lambda: not svc.outbox.db_up, 30, "the lock to count as an outage")
        assert svc.outbox.depth > 0
        assert svc.counters()["outbox_database_up"] == 0
    finally:
        await asyncio.to_thread(locker.wait, 30)
    await asyncio.wait_for(svc.flush(), 60)
    assert svc.outbox.db_up
    assert await _call_record(sqlite_db, sid) == EXPECTED
    assert svc.outbox.failed_total == 0


async def test_full_outbox_refuses_loudly_and_never_blocks(
    service_factory: Callable[..., EventsService], caplog: pytest.LogCaptureFixture
) -> None:
    away = open_database(DatabaseSettings(url=UNREACHABLE))
    try:
        svc = service_factory(away, max_entries=3)
        await svc.start()
        caplog.set_level(logging.ERROR, logger="app.outbox.service")
        sid = uuid.uuid4().hex
        started = time.perf_counter()
        for e in call_events(sid):
            svc.publish(e)  # never waits, full or not
        publish_s = time.perf_counter() - started
        await _until(lambda: svc.outbox.rejected_total > 0, 10, "records to be refused")
        counters = svc.counters()
        assert counters["outbox_depth"] == 3
        assert counters["outbox_rejected_total"] == svc.outbox.rejected_total > 0
        assert any("refused because the outbox is full" in r.getMessage()
                   for r in caplog.records if r.levelno == logging.ERROR)
        assert publish_s < 5  # sanity only: publishing is synchronous and local
    finally:
        await away.dispose()


async def test_records_past_the_age_bound_are_given_up_loudly(
    service_factory: Callable[..., EventsService], caplog: pytest.LogCaptureFixture
) -> None:
    away = open_database(DatabaseSettings(url=UNREACHABLE))
    try:
        svc = service_factory(away, max_age_s=0.3)
        await svc.start()
        caplog.set_level(logging.ERROR, logger="app.outbox.service")
        for e in call_events(uuid.uuid4().hex):
            svc.publish(e)
        await _until(lambda: svc.outbox.expired_total > 0 and svc.outbox.depth == 0, 10,
                     "the records to expire")
        assert svc.counters()["outbox_expired_total"] == svc.outbox.expired_total
        assert any("older than outbox.max_age_s" in r.getMessage() for r in caplog.records)
    finally:
        await away.dispose()


# --- a real PostgreSQL stopped and started under the writer ---------------------------------
@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    if PG_MISSING:
        pytest.skip(PG_MISSING)
    c = PrivateCluster()
    try:
        c.start()
        yield c
    finally:
        c.destroy()


@pytest.mark.postgres
async def test_postgres_outage_records_wait_and_land_once(
    cluster: PrivateCluster, service_factory: Callable[..., EventsService]
) -> None:
    if not cluster.running():
        cluster.start()
    db = await _migrated(cluster.create_database(f"pb_{uuid.uuid4().hex[:12]}"))
    try:
        sid, agent_id = await make_session(db)
        svc = service_factory(db)
        await svc.start()
        events = call_events(sid, agent_id)
        for e in events[:4]:
            svc.publish(e)
        await svc.flush()
        await asyncio.to_thread(cluster.stop)
        for e in events[4:]:
            svc.publish(e)
        await _until(lambda: not svc.outbox.db_up, 30, "the outage to be noticed")
        await asyncio.sleep(1.0)  # a few failed retries
        assert svc.outbox.depth > 0
        assert svc.outbox.oldest_age_s() > 0.5
        await asyncio.to_thread(cluster.start)
        await asyncio.wait_for(svc.flush(), 60)
        assert svc.outbox.db_up and svc.outbox.depth == 0
        assert await _call_record(db, sid) == EXPECTED
        assert svc.outbox.failed_total == 0 and svc.outbox.outages_total == 1
    finally:
        if not cluster.running():
            cluster.start()
        await db.dispose()


def test_a_server_shutting_down_is_an_outage_however_it_is_wrapped() -> None:
    """SQLAlchemy hands asyncpg's error over inside its own adapter class; a database that is
    shutting down or starting up must still read as an outage (retry), never as a bad record
    (park, or a webhook lease left to expire)."""
    import asyncpg
    from sqlalchemy import exc as sa_exc

    from app.outbox.service import is_outage

    class Error(Exception):  # the shape of SQLAlchemy's adapted asyncpg error
        pass

    for driver_error in (asyncpg.exceptions.CannotConnectNowError("shutting down"),
                         asyncpg.exceptions.AdminShutdownError("terminating connection")):
        adapted = Error(str(driver_error))
        adapted.__cause__ = driver_error
        wrapped = sa_exc.DBAPIError("SELECT 1", None, adapted)
        wrapped.__cause__ = adapted
        assert is_outage(wrapped), type(driver_error).__name__
    refused = Error("duplicate key")
    refused.__cause__ = asyncpg.exceptions.UniqueViolationError("duplicate key")
    assert not is_outage(sa_exc.IntegrityError("INSERT", None, refused))


async def test_a_second_owner_of_one_outbox_file_is_refused_at_start(
        sqlite_db: Database, service_factory: Callable[..., EventsService]) -> None:
    # Two replayers on one file would each trust their own count of what it holds: one removes
    # the other's records and the other's shutdown flush waits for them until it times out.
    first = service_factory(sqlite_db)
    await first.start()
    second = service_factory(sqlite_db)
    with pytest.raises(OutboxInUse, match=r"outbox\.path"):
        await second.start()
    await first.stop(grace_s=1.0)
    await second.start()  # the owner let go
    sid, agent_id = await make_session(sqlite_db)
    for e in call_events(sid, agent_id):
        second.publish(e)
    await second.flush()
    assert (await _call_record(sqlite_db, sid)) == EXPECTED
