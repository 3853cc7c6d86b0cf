"""Repositories against real SQLite and Postgres."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from app.db.engine import Database
from app.db.repos import agents, api_keys, credentials, numbers, sessions, usage


async def test_timestamps_are_aware_utc_on_every_backend(database: Database):
    async with database.transaction() as s:
        row = await sessions.create(s, status="active")
        sid = row.id
    async with database.session() as s:
        row = await sessions.get(s, sid)
        assert row.created_at.tzinfo is not None
        assert row.created_at.utcoffset() == timedelta(0)
        # Arithmetic with now() works (it would raise on a naive value).
        assert datetime.now(UTC) - row.created_at < timedelta(minutes=5)


async def test_sqlite_pragmas(database: Database):
    if not database.is_sqlite:
        return
    async with database.engine.connect() as conn:
        assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
        assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
        assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 5000


async def test_foreign_keys_enforced(database: Database):
    with pytest.raises(IntegrityError):
        async with database.transaction() as s:
            await numbers.put(s, "+14155550100", "no-such-agent")


async def test_agent_versions_are_append_only(database: Database):
    async with database.transaction() as s:
        agent, v1 = await agents.create(s, {"name": "a", "prompt": "one"})
    assert v1.version == 1
    async with database.transaction() as s:
        agent = await agents.get_for_update(s, agent.id)
        v2 = await agents.add_version(s, agent, {"name": "b", "prompt": "two"})
    assert v2.version == 2
    async with database.session() as s:
        agent = await agents.get(s, agent.id)
        assert agent.name == "b" and agent.current_version == 2
        assert (await agents.get_version(s, agent.id, 1)).config == {"name": "a", "prompt": "one"}
        assert [v.version for v in await agents.list_versions(s, agent.id)] == [1, 2]
    # Two writers computing the same next version: the second one fails, nothing is lost.
    with pytest.raises(IntegrityError):
        async with database.transaction() as s:
            from app.db.models import AgentVersion

            s.add(AgentVersion(agent_id=agent.id, version=2, config={}))
            await s.flush()


async def test_number_lookup_skips_deleted_agents(database: Database):
    async with database.transaction() as s:
        agent, _ = await agents.create(s, {"name": "a", "prompt": "p"})
        await numbers.put(s, "+14155550100", agent.id)
    async with database.session() as s:
        found = await numbers.agent_for_number(s, "+14155550100")
        assert found is not None and found[0].id == agent.id and found[1].version == 1
        assert await numbers.agent_for_number(s, "+14155550101") is None
    async with database.transaction() as s:
        await agents.soft_delete(s, await agents.get(s, agent.id))
    async with database.session() as s:
        assert await numbers.agent_for_number(s, "+14155550100") is None
        assert await agents.get(s, agent.id) is None
        assert await agents.get(s, agent.id, include_deleted=True) is not None


async def test_api_key_lifecycle(database: Database):
    async with database.transaction() as s:
        row, secret = await api_keys.create(s, "ci")
    async with database.transaction() as s:
        assert (await api_keys.find_active(s, secret)).id == row.id
        assert await api_keys.find_active(s, secret + "x") is None
        assert await api_keys.touch(s, row) in (True, False)
    async with database.transaction() as s:
        await api_keys.revoke(s, row.id)
    async with database.session() as s:
        assert await api_keys.find_active(s, secret) is None
        stored = (await s.execute(text("SELECT key_hash FROM api_keys"))).scalar_one()
        assert secret not in stored and len(stored) == 64


async def test_credentials_put_replace_exists(database: Database):
    async with database.transaction() as s:
        _, created = await credentials.put(s, "a", b"x")
        assert created
        _, created = await credentials.put(s, "a", b"y")
        assert not created
    async with database.session() as s:
        assert await credentials.existing_names(s, {"a", "b"}) == {"a"}
        assert (await credentials.get(s, "a")).ciphertext == b"y"


async def test_session_end_is_idempotent_and_computes_duration(database: Database):
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    async with database.transaction() as s:
        row = await sessions.create(s, status="ringing", created_at=t0)
        await sessions.set_status(s, row.id, "active", answered_at=t0 + timedelta(seconds=5))
        await sessions.end(s, row.id, end_reason="agent_hangup",
                           ended_at=t0 + timedelta(seconds=65))
        await sessions.end(s, row.id, end_reason="later", hangup_cause="NORMAL_CLEARING")
    async with database.session() as s:
        row = await sessions.get(s, row.id)
        assert (row.status, row.end_reason, row.duration_s) == ("ended", "agent_hangup", 60.0)
        assert row.hangup_cause == "NORMAL_CLEARING"
        assert (await sessions.get_by_call_uuid(s, "none")) is None
    with pytest.raises(ValueError):
        async with database.transaction() as s:
            await sessions.set_status(s, row.id, "bogus")


async def test_turn_indices_and_tool_calls(database: Database):
    async with database.transaction() as s:
        row = await sessions.create(s, status="active")
        a = await sessions.add_turn(s, row.id, "user", "hi")
        b = await sessions.add_turn(s, row.id, "assistant", "hello")
        await sessions.update_turn(s, b.id, heard_text="hel", interrupted=True)
        await sessions.add_tool_call(s, row.id, "call_1", "lookup", {"q": 1})
        await sessions.finish_tool_call(s, "call_1", status="error", error="boom")
    assert (a.idx, b.idx) == (0, 1)
    async with database.session() as s:
        turns = await sessions.list_turns(s, row.id)
        assert [(t.role, t.heard_text, t.interrupted) for t in turns] == [
            ("user", None, False), ("assistant", "hel", True)]
        (tc,) = await sessions.list_tool_calls(s, row.id)
        assert (tc.status, tc.error) == ("error", "boom")


async def test_mark_interrupted(database: Database):
    async with database.transaction() as s:
        ids = [(await sessions.create(s, status=st)).id
               for st in ("ringing", "active", "ended", "failed")]
    async with database.transaction() as s:
        assert await sessions.mark_interrupted(s) == 2
    async with database.session() as s:
        got = [(await sessions.get(s, i)).status for i in ids]
    assert got == ["interrupted", "interrupted", "ended", "failed"]


async def test_mark_interrupted_leaves_other_replicas_live_calls(database: Database):
    old = datetime.now(UTC) - timedelta(hours=2)
    async with database.transaction() as s:
        mine = (await sessions.create(s, status="active", node_id="a")).id
        theirs = (await sessions.create(s, status="active", node_id="b")).id
        abandoned = (await sessions.create(s, status="ringing", node_id="c", created_at=old)).id
        default = (await sessions.create(s, status="ringing")).id
        moved = (await sessions.create(s, status="ringing", node_id="b")).id
        # The stream landed on this replica: activating claims the session.
        previous = sessions.current_node_id()
        sessions.set_node_id("a")
        try:
            await sessions.set_status(s, moved, "active")
        finally:
            sessions.set_node_id(previous)
    async with database.transaction() as s:
        closed = await sessions.mark_interrupted(
            s, node_id="a", stale_before=datetime.now(UTC) - timedelta(hours=1))
    assert closed == 3
    async with database.session() as s:
        got = {i: (await sessions.get(s, i)).status
               for i in (mine, theirs, abandoned, default, moved)}
        assert (await sessions.get(s, default)).node_id == sessions.current_node_id()
    assert got == {mine: "interrupted", theirs: "active", abandoned: "interrupted",
                   default: "ringing", moved: "interrupted"}


async def test_usage_aggregate_respects_range(database: Database):
    t0 = datetime(2026, 5, 1, 23, 30, tzinfo=UTC)
    async with database.transaction() as s:
        for minutes, qty in ((0, 1.0), (45, 2.0), (60 * 24 + 40, 4.0)):
            await usage.record(s, kind="tts", provider="piper", metric="characters",
                               quantity=qty, created_at=t0 + timedelta(minutes=minutes))
    async with database.session() as s:
        rows = await usage.aggregate(s, "day")
        assert [(r.key, r.quantity) for r in rows] == [
            ("2026-05-01", 1.0), ("2026-05-02", 2.0), ("2026-05-03", 4.0)]
        rows = await usage.aggregate(s, "provider", since=t0 + timedelta(minutes=1),
                                     until=t0 + timedelta(days=1))
        assert [(r.key, r.kind, r.quantity, r.records) for r in rows] == [
            ("piper", "tts", 2.0, 1)]
        with pytest.raises(ValueError):
            await usage.aggregate(s, "month")  # type: ignore[arg-type]
