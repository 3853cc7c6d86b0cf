"""What the outbox costs per turn, and how fast it replays after an outage.

    python bench/outbox_bench.py                                  # SQLite (temp file)
    python bench/outbox_bench.py --db postgresql+asyncpg://postgres@127.0.0.1:5432/test

Three measurements on the same database (migrated into a fresh SQLite file, or into a new
database created on the given Postgres server and dropped afterwards):

- hot path: what `publish()` costs the call per turn (the synchronous part: the bus, the sink
  enqueuing the record). Before: the SQL and webhook sinks each put the envelope on an
  in-memory queue. Now: the record is JSON-encoded and put on the outbox's memory queue.
- per-turn write: one turn's events (the typical dozen a turn publishes, 9 of them written) from
  publish until committed in the database. Before: the old writer's work, one transaction
  applying the events (SQL + webhook sinks). Now: through the outbox — spooled to the local file
  (fsync), replayed in one transaction, removed from the file.
- replay: an outage's worth of records (`--replay-turns` turns) left in the outbox file by a
  run whose database was unreachable, then written by the next run: records/s and turns/s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import make_url

from app.config import DatabaseSettings, EventsSettings, OutboxSettings
from app.db import migrate
from app.db.engine import Database, open_database
from app.db.models import Agent, AgentVersion, Session
from app.events.bus import Envelope, EventBus
from app.events.service import EventsService
from app.events.sql_sink import SqlSink
from app.events.webhooks import WebhookSink, WebhookTargets
from pipelines import events as ev

UNREACHABLE = "postgresql+asyncpg://pb@127.0.0.1:1/pb"
SECRET = "whsec_bench"


def turn_events(sid: str, n: int) -> list[ev.Event]:
    """What one question-and-answer turn publishes (the order a real call emits them)."""
    t = f"t{n}"
    return [
        ev.UserSpeechStarted(session_id=sid),
        ev.UserSpeechStopped(session_id=sid, speech_ms=900),
        ev.UserTranscription(session_id=sid, text="where is my order", is_final=True),
        ev.UserTurnCompleted(session_id=sid, turn_id=t, text="where is my order",
                             trigger="model", eou_probability=0.9),
        ev.ToolCalled(session_id=sid, call_id=f"call_{n}", name="get_order",
                      arguments={"order": "A123"}),
        ev.ToolCompleted(session_id=sid, call_id=f"call_{n}", name="get_order",
                         result={"status": "shipped"}, latency_ms=80.0),
        ev.SessionUsage(session_id=sid, provider="openai", model="gpt-4o-mini", kind="llm",
                        metric="input_tokens", quantity=120),
        ev.SessionUsage(session_id=sid, provider="elevenlabs", kind="tts",
                        metric="characters", quantity=40),
        ev.AgentSpeechStarted(session_id=sid, segment_id=f"s{n}", text="It ships Tuesday."),
        ev.AgentSpeechCompleted(session_id=sid, segment_id=f"s{n}", text="It ships Tuesday."),
        ev.TurnCompleted(session_id=sid, turn_id=t, user_text="where is my order",
                         agent_text="It ships Tuesday.", heard_text="It ships Tuesday."),
        ev.TurnMetrics(session_id=sid, turn_id=t, llm_ttft_ms=300, first_audio_out_ms=600),
    ]


async def new_session(db: Database) -> str:
    async with db.transaction() as s:
        agent = Agent(name="bench")
        s.add(agent)
        await s.flush()
        s.add(AgentVersion(agent_id=agent.id, version=1, config={"name": "bench"}))
        row = Session(agent_id=agent.id, agent_version=1, status="active", call_uuid="c")
        s.add(row)
        await s.flush()
        return row.id


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def row(name: str, xs: list[float], unit: str) -> str:
    return (f"| {name} | {statistics.mean(xs):.3f} | {pct(xs, 50):.3f} | {pct(xs, 95):.3f} | "
            f"{unit} |")


async def hot_path(db: Database, tmp: Path, turns: int) -> list[str]:
    """Synchronous publish cost per turn (µs), before and after."""
    # Before: two sinks that each only enqueued.
    old_bus = EventBus()
    q1: asyncio.Queue[Envelope] = asyncio.Queue(100_000)
    q2: asyncio.Queue[Envelope] = asyncio.Queue(100_000)
    old_bus.add_sink("sql", q1.put_nowait)
    old_bus.add_sink("webhooks", q2.put_nowait)
    svc = EventsService(EventsSettings(), db.sessionmaker, SECRET,
                        outbox_settings=OutboxSettings(queue_size=1_000_000),
                        outbox_path=tmp / "hot.db")
    sid = uuid.uuid4().hex
    svc.targets.register(sid, None)  # as the stream does: this agent has no webhook
    before, after = [], []
    for n in range(turns):
        evs = turn_events(sid, n)
        t0 = time.perf_counter()
        for e in evs:
            old_bus.publish(e)
        before.append((time.perf_counter() - t0) * 1e6)
        t0 = time.perf_counter()
        for e in evs:
            svc.bus.publish(e)
        after.append((time.perf_counter() - t0) * 1e6)
    return [row("publish, before (queue per sink)", before, "µs / turn"),
            row("publish, now (encode + outbox queue)", after, "µs / turn")]


async def per_turn_write(db: Database, tmp: Path, turns: int) -> list[str]:
    """Turns alternate between the two paths, so background load hits both alike."""
    sql, hooks = SqlSink(), WebhookSink(WebhookTargets(db.sessionmaker))
    old_bus = EventBus()
    old_sid, new_sid = await new_session(db), await new_session(db)
    svc = EventsService(EventsSettings(), db.sessionmaker, SECRET, outbox_path=tmp / "turn.db")
    svc.targets.register(new_sid, None)  # as the stream does: this agent has no webhook
    hooks.targets.register(old_sid, None)
    await svc.start()
    before, after = [], []
    try:
        for n in range(turns):
            envs = [old_bus.publish(e) for e in turn_events(old_sid, n)]
            t0 = time.perf_counter()
            async with db.sessionmaker() as s, s.begin():
                for env in envs:  # the old writer applied every envelope it was given
                    await sql.apply(s, env)
                    await hooks.apply(s, env)
            sql.committed()
            hooks.committed()
            before.append((time.perf_counter() - t0) * 1e3)

            t0 = time.perf_counter()
            for e in turn_events(new_sid, n):
                svc.publish(e)
            await svc.flush()
            after.append((time.perf_counter() - t0) * 1e3)
    finally:
        await svc.stop()
    return [row("turn written, before (one transaction)", before, "ms / turn"),
            row("turn written, now (outbox file fsync + transaction + removal)", after,
                "ms / turn")]


async def replay(db: Database, tmp: Path, turns: int) -> list[str]:
    sid = await new_session(db)
    path = tmp / "replay.db"
    away = open_database(DatabaseSettings(url=UNREACHABLE))
    first = EventsService(EventsSettings(), away.sessionmaker, SECRET,
                          outbox_settings=OutboxSettings(queue_size=1_000_000),
                          outbox_path=path)
    await first.start()
    first.targets.register(sid, None)
    for n in range(turns):
        for e in turn_events(sid, n):
            first.publish(e)
    await first.stop(grace_s=0.5)
    await away.dispose()
    second = EventsService(EventsSettings(), db.sessionmaker, SECRET, outbox_path=path)
    t0 = time.perf_counter()
    await second.start()
    records = second.outbox.depth
    await second.flush()
    elapsed = time.perf_counter() - t0
    await second.stop()
    return [f"| replay of {turns} turns | {records} records | {elapsed:.2f} s | "
            f"{records / elapsed:,.0f} records/s | {turns / elapsed:,.0f} turns/s |"]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", help="a Postgres URL to create a scratch database on "
                    "(default: a temp SQLite file)")
    ap.add_argument("--turns", type=int, default=200, help="turns per latency row")
    ap.add_argument("--replay-turns", type=int, default=2000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pb-outbox-bench-"))
    scratch: str | None = None
    if args.db:
        import asyncpg

        scratch = f"pb_bench_{uuid.uuid4().hex[:10]}"
        admin = make_url(args.db).set(drivername="postgresql")
        conn = await asyncpg.connect(admin.render_as_string(hide_password=False))
        await conn.execute(f'CREATE DATABASE "{scratch}"')
        await conn.close()
        url = make_url(args.db).set(database=scratch).render_as_string(hide_password=False)
    else:
        url = f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
    db = open_database(DatabaseSettings(url=url))
    try:
        await migrate.upgrade(db)
        backend = db.engine.dialect.name
        out: list[str] = [f"database: {backend}, {args.turns} turns per row", "",
                          "| measurement | mean | p50 | p95 | unit |", "|---|---:|---:|---:|---|"]
        out += await hot_path(db, tmp, args.turns)
        out += await per_turn_write(db, tmp, args.turns)
        out += ["", "| replay | records | time | throughput | |", "|---|---:|---:|---:|---:|"]
        out += await replay(db, tmp, args.replay_turns)
        print("\n".join(out))
    finally:
        await db.dispose()
        if scratch and args.db:
            import asyncpg

            conn = await asyncpg.connect(admin.render_as_string(hide_password=False))
            await conn.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
            await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
