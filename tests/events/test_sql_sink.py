"""The SQL sink: a call's events become session status, turns, tool calls and usage rows."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from app.db.engine import Database
from app.db.models import Session, ToolCallRecord, Turn, UsageRecord
from app.db.repos import sessions as sessions_repo
from app.events.service import EventsService
from app.events.sql_sink import tool_call_row_id
from pipelines import events as ev
from tests.events.conftest import call_events, make_session


async def test_call_events_are_persisted(database: Database, events: EventsService) -> None:
    sid, agent_id = await make_session(database)
    for e in call_events(sid, agent_id)[:-1]:
        events.publish(e)
    await events.flush()
    async with database.session() as s:
        row = await s.get(Session, sid)
        assert row is not None and row.status == "active" and row.answered_at is not None

    events.publish(call_events(sid, agent_id)[-1])
    await events.flush()
    async with database.session() as s:
        row = await s.get(Session, sid)
        assert row is not None
        assert row.status == "ended" and row.end_reason == "caller_hangup"
        assert row.ended_at is not None and row.duration_s is not None
        assert row.report == {"turns": 5}
        turns = await sessions_repo.list_turns(s, sid)
        tools = await sessions_repo.list_tool_calls(s, sid)
        usage = list((await s.execute(
            select(UsageRecord).where(UsageRecord.session_id == sid).order_by(UsageRecord.id)
        )).scalars())

    assert [(t.idx, t.role, t.text) for t in turns] == [
        (0, "assistant", "Hello!"),
        (1, "user", "what's the weather"),
        (2, "assistant", "It is 21 degrees."),
        (3, "user", "thanks bye"),
        (4, "assistant", "Goodbye!"),
    ]
    interrupted = turns[2]
    assert interrupted.heard_text == "It is 21" and interrupted.interrupted is True
    # turn.metrics arrived before turn.completed for t1 and t2: attached on insert.
    assert interrupted.latency is not None
    assert interrupted.latency["llm_ttft_ms"] == 380
    assert interrupted.latency["server_added_ms"] == 45
    assert turns[4].latency == {"llm_ttft_ms": 300, "first_audio_out_ms": 600}
    assert turns[0].heard_text == "Hello!" and not turns[0].interrupted
    assert turns[1].started_at <= turns[1].ended_at

    assert len(tools) == 1
    tool = tools[0]
    assert tool.id == tool_call_row_id(sid, "call_0") and tool.name == "weather"
    assert tool.status == "ok" and tool.result == {"temp_c": 21} and tool.latency_ms == 120.5
    assert tool.arguments == {"city": "Paris"}

    assert [(u.kind, u.provider, u.metric, u.quantity, u.agent_id) for u in usage] == [
        ("llm", "llama_cpp", "input_tokens", 150.0, agent_id),
        ("llm", "llama_cpp", "input_tokens", 210.0, agent_id),
        ("tts", "piper", "characters", 42.0, agent_id),
    ]


async def test_metrics_after_completion_update_the_turn(
    database: Database, events: EventsService
) -> None:
    sid, _ = await make_session(database, status="active")
    events.publish(ev.TurnCompleted(session_id=sid, turn_id="x", user_text="hi",
                                    agent_text="hello"))
    events.publish(ev.TurnMetrics(session_id=sid, turn_id="x", llm_ttft_ms=250.0))
    await events.flush()
    async with database.session() as s:
        turns = await sessions_repo.list_turns(s, sid)
    assert [t.role for t in turns] == ["user", "assistant"]
    assert turns[1].latency == {"llm_ttft_ms": 250.0} and turns[0].latency is None


async def test_tool_failures_record_status_and_ids_do_not_collide(
    database: Database, events: EventsService
) -> None:
    sid1, _ = await make_session(database, status="active")
    sid2, _ = await make_session(database, status="active")
    for sid in (sid1, sid2):  # a local LLM reusing "call_0" in every call
        events.publish(ev.ToolCalled(session_id=sid, call_id="call_0", name="slow"))
    events.publish(ev.ToolFailed(session_id=sid1, call_id="call_0", name="slow",
                                 error="the tool did not answer within 2 s",
                                 status="timeout", latency_ms=2001))
    events.publish(ev.ToolFailed(session_id=sid2, call_id="call_0", name="slow",
                                 error="cancelled", status="cancelled", latency_ms=300))
    await events.flush()
    async with database.session() as s:
        rows = {r.session_id: r for r in (await s.execute(select(ToolCallRecord))).scalars()}
    assert rows[sid1].status == "timeout" and rows[sid1].latency_ms == 2001
    assert rows[sid2].status == "cancelled" and rows[sid2].error == "cancelled"


async def test_failures_voicemail_and_one_bad_event(
    database: Database, events: EventsService
) -> None:
    sid, _ = await make_session(database, status="active")
    events.publish(ev.VoicemailDetected(session_id=sid, result="machine", method="beep"))
    # Usage for a session that does not exist violates the foreign key; the rest still lands.
    events.publish(ev.SessionUsage(session_id="nope", provider="p", kind="stt",
                                   metric="audio_seconds", quantity=1))
    events.publish(ev.SessionEnded(session_id=sid, reason="error", duration_s=3))
    await events.flush()
    async with database.session() as s:
        row = await s.get(Session, sid)
        assert row is not None and row.voicemail == "machine"
        assert row.status == "failed" and row.end_reason == "error"
        assert (await s.execute(select(Turn))).first() is None
    # The refused record is parked in the outbox, counted as a failed write.
    assert events.outbox.failed_total == 1


async def test_rest_api_shows_what_the_events_said(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    """After a call: GET /v1/sessions/{id} has every turn with heard text, interruption flag
    and latency; /v1/usage totals equal the usage the adapters reported."""
    state = app.state.pb
    sid, agent_id = await make_session(state.db)
    seq = call_events(sid, agent_id)
    for e in seq:
        state.events.publish(e)
    await state.events.flush()

    r = await client.get(f"/v1/sessions/{sid}", headers=admin_headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ended" and body["end_reason"] == "caller_hangup"
    turns = body["turns"]
    assert [(t["role"], t["text"], t["heard_text"], t["interrupted"]) for t in turns] == [
        ("assistant", "Hello!", "Hello!", False),
        ("user", "what's the weather", None, False),
        ("assistant", "It is 21 degrees.", "It is 21", True),
        ("user", "thanks bye", None, False),
        ("assistant", "Goodbye!", "Goodbye!", False),
    ]
    assert turns[2]["latency"]["first_audio_out_ms"] == 640
    assert [(t["name"], t["status"]) for t in body["tool_calls"]] == [("weather", "ok")]

    reported: dict[tuple[str, str], float] = {}
    for e in seq:
        if isinstance(e, ev.SessionUsage):
            key = (e.provider, e.metric)
            reported[key] = reported.get(key, 0.0) + e.quantity
    r = await client.get("/v1/usage", params={"group_by": "provider"}, headers=admin_headers)
    assert r.status_code == 200, r.text
    totals = {(i["key"], i["metric"]): i["quantity"] for i in r.json()["items"]}
    assert totals == reported
    r = await client.get("/v1/usage", params={"group_by": "agent"}, headers=admin_headers)
    assert {i["key"] for i in r.json()["items"]} == {agent_id}


async def test_first_tool_outcome_wins_but_a_failure_corrects_ok(
    database: Database, events: EventsService
) -> None:
    """The engine may report a call the executor already reported; records stay right."""
    sid, _ = await make_session(database, status="active")
    for e in (
        ev.ToolCalled(session_id=sid, call_id="a", name="t"),
        ev.ToolCalled(session_id=sid, call_id="a", name="t"),
        ev.ToolFailed(session_id=sid, call_id="a", name="t", status="timeout", error="slow"),
        ev.ToolCompleted(session_id=sid, call_id="a", name="t", result={"error": "slow"}),
        ev.ToolCalled(session_id=sid, call_id="b", name="end_call"),
        ev.ToolCompleted(session_id=sid, call_id="b", name="end_call", result={"ok": 1}),
        ev.ToolFailed(session_id=sid, call_id="b", name="end_call", error="hangup failed"),
    ):
        events.publish(e)
    await events.flush()
    async with database.session() as s:
        rows = {r.id.split(":")[1]: r for r in await sessions_repo.list_tool_calls(s, sid)}
    assert len(rows) == 2
    assert (rows["a"].status, rows["a"].error) == ("timeout", "slow")
    assert (rows["b"].status, rows["b"].error) == ("error", "hangup failed")


async def test_a_restarted_sink_replays_turns_and_usage_once_and_goes_on_numbering(
    database: Database, events_factory: Callable[..., EventsService]
) -> None:
    """After a restart the sink knows no turn index: a replayed turn is skipped (not written
    twice, no lookup first), and the next new turn is numbered after what is in the table."""
    sid, agent_id = await make_session(database)
    first = events_factory()
    await first.start()
    envs = [first.publish(e) for e in call_events(sid, agent_id)[:-1]]
    await first.flush()
    await first.stop()

    second = events_factory()  # a new process: empty caches, the same database
    await second.start()
    for env in envs:
        second.outbox.put("event", sid, env.to_dict())
    second.publish(ev.TurnCompleted(session_id=sid, turn_id="t9", user_text="one more",
                                    agent_text="Sure."))
    second.publish(ev.SessionUsage(session_id=sid, provider="piper", model="", kind="tts",
                                   metric="characters", quantity=5.0))
    await second.flush()
    async with database.session() as s:
        turns = await sessions_repo.list_turns(s, sid)
        usage = list((await s.execute(
            select(UsageRecord.quantity).where(UsageRecord.session_id == sid)
        )).scalars())
    assert [(t.role, t.text) for t in turns] == [
        ("assistant", "Hello!"), ("user", "what's the weather"),
        ("assistant", "It is 21 degrees."), ("user", "thanks bye"), ("assistant", "Goodbye!"),
        ("user", "one more"), ("assistant", "Sure."),
    ]
    assert [t.idx for t in turns][:5] == [0, 1, 2, 3, 4] and turns[5].idx < turns[6].idx
    assert sorted(usage) == [5.0, 42.0, 150.0, 210.0]
