"""Live calls while the database goes away (issue 21): nothing recorded is lost, nothing twice.

The real server (uvicorn on 127.0.0.1, call host, VAD and turn models, outbox, event sinks,
webhook deliverer) runs on a private PostgreSQL cluster (initdb + pg_ctl in a temp dir, its own
port) that the test stops in the middle of a call and starts again. The caller (Plivo
simulator, Piper speech) asks a question that needs a webhook tool and another one while the
database is down; the vendors outside this machine are protocol-level fakes. Afterwards every
turn, the tool call, every usage row, the session's end and every agent webhook delivery is
in the database exactly once — checked against what the server published on its event bus.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.config import Settings
from app.db.models import Session, ToolCallRecord, Turn, UsageRecord, WebhookDelivery
from app.events.bus import Envelope
from app.events.signing import EVENT_ID_HEADER
from tests.conftest import _migrate, _run_in_thread
from tests.e2e.test_tools_call import order_tool, signed_responder
from tests.e2e.tools_fixtures import ADMIN, CallStack, Recorder, call_stack, of_type
from tests.events.local_http import LocalHttpServer, Received, ok_json
from tests.fakes.fake_openai import ChatReply, FakeToolCall
from tests.pg_cluster import PG_MISSING, PrivateCluster

pytestmark = [pytest.mark.slow, pytest.mark.postgres,
              pytest.mark.skipif(bool(PG_MISSING), reason=PG_MISSING or "")]

OUTBOX = {"retry_max_s": 0.5}
Q1, Q2 = "Where is my order A123?", "Can I change the address?"


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    c = PrivateCluster()
    try:
        c.start()
        yield c
    finally:
        c.destroy()


@pytest.fixture
def database_url(cluster: PrivateCluster) -> str:
    """Overrides the shared fixture: a fresh migrated database on the private cluster."""
    if not cluster.running():
        cluster.start()
    url = cluster.create_database(f"pb_{uuid.uuid4().hex[:12]}")
    _run_in_thread(lambda: _migrate(url))
    return url


class EventReceiver:
    """The agent's event webhook endpoint: every event id it was sent, with repeats."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, r: Received) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self.ids.append(r.headers[EVENT_ID_HEADER])
        return ok_json()

    def seen(self) -> list[str]:
        with self._lock:
            return list(self.ids)


async def _until(cond: Callable[[], Any], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def _metrics(stack: CallStack) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=stack.server.base_url) as c:
        text = (await c.get("/metrics")).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("phonebooth_outbox_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _expected_turns(envs: list[Envelope]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for e in of_type(envs, "turn.completed"):
        d = e.event.payload()
        if d.get("user_text"):
            rows.append(("user", d["user_text"]))
        if d.get("agent_text") or d.get("heard_text"):
            rows.append(("assistant", d["agent_text"]))
    return rows


async def _stored(stack: CallStack, sid: str) -> dict[str, Any]:
    async with stack.state.db.session() as s:
        row = await s.get(Session, sid)
        turns = [(t.role, t.text) for t in (await s.execute(
            select(Turn).where(Turn.session_id == sid).order_by(Turn.idx))).scalars()]
        tools = [(t.name, t.status) for t in (await s.execute(
            select(ToolCallRecord).where(ToolCallRecord.session_id == sid))).scalars()]
        usage = [u.event_id for u in (await s.execute(
            select(UsageRecord).where(UsageRecord.session_id == sid))).scalars()]
        deliveries = [(d.event_id, d.status) for d in (await s.execute(
            select(WebhookDelivery).where(WebhookDelivery.session_id == sid))).scalars()]
    assert row is not None
    return {"status": row.status, "end_reason": row.end_reason, "turns": turns,
            "tools": tools, "usage": usage, "deliveries": deliveries}


async def test_database_stopped_mid_call_loses_nothing(
    cluster: PrivateCluster, settings_factory: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch, e2e_report: Callable[[str, list[str]], None],
) -> None:
    receiver = EventReceiver()
    async with call_stack(settings_factory, monkeypatch, outbox=OUTBOX) as stack:
        with LocalHttpServer(signed_responder(stack)) as tool_server, \
                LocalHttpServer(receiver) as hooks:
            await stack.add_agent(tools=[order_tool(tool_server.url + "/orders")],
                                  tool_settings={"hold_after_ms": 5000},
                                  webhook_url=hooks.url + "/events")
            rec = Recorder(stack)
            stack.deepgram.queue_transcript(Q1, Q2)
            stack.openai.queue_chat(
                ChatReply(tool_calls=[FakeToolCall("get_order", {"order": "A123"}, "call_1")]),
                "Your order ships on Tuesday.", "Yes, tell me the new address.")
            async with stack.call() as call:
                sid = await stack.session_id(call)
                await rec.wait_type("agent.speech_completed", sid=sid)  # the greeting
                await asyncio.to_thread(cluster.stop)
                down_at = time.monotonic()
                await stack.say(call, Q1, trail_ms=200)
                await rec.wait_type("turn.completed", sid=sid, n=1, within_s=40)
                async with httpx.AsyncClient(base_url=stack.server.base_url) as c:
                    ready = await c.get("/readyz")
                during = await _metrics(stack)
                await stack.say(call, Q2, trail_ms=200)
                await rec.wait_type("turn.completed", sid=sid, n=2, within_s=40)
                await asyncio.to_thread(cluster.start)
                outage_s = time.monotonic() - down_at
            # The call is over: its records reach the database once the replayer is through.
            await asyncio.wait_for(stack.settled(), 60)
            envs = rec.session(sid)
            stored = await _stored(stack, sid)
            published_events = {e.id for e in envs}
            # Deliveries go out in order once the database is back; wait for all of them.
            await _until(lambda: _all_delivered(stack, sid), 60, "webhook deliveries")
            stored = await _stored(stack, sid)
            sent = receiver.seen()
        after = await _metrics(stack)

    # /readyz said degraded (and still admitted calls) while the database was away.
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "degraded: database"
    assert during["phonebooth_outbox_database_up"] == 0
    assert during["phonebooth_outbox_depth"] > 0
    assert during["phonebooth_outbox_oldest_age_seconds"] > 0

    # Every turn, the tool call, every usage row and the end: exactly once.
    assert stored["status"] == "ended"
    assert stored["turns"] == _expected_turns(envs)
    assert [r for r, _ in stored["turns"]].count("user") == 2
    assert stored["tools"] == [("get_order", "ok")]
    usage_ids = [e.id for e in of_type(envs, "session.usage")]
    assert usage_ids and sorted(stored["usage"]) == sorted(usage_ids)
    # Webhook deliveries: one row per event, each delivered, each sent once.
    ids = [d[0] for d in stored["deliveries"]]
    assert len(ids) == len(set(ids)) and set(ids) <= published_events
    assert {"turn.completed", "session.ended", "tool.called"} <= {
        e.type for e in envs if e.id in set(ids)}
    assert all(status == "delivered" for _, status in stored["deliveries"])
    assert Counter(sent) == Counter(ids)
    assert after["phonebooth_outbox_failed_total"] == 0
    assert after["phonebooth_outbox_replayed_total"] > 0
    e2e_report("database outage mid-call", [
        f"database away for {outage_s:.1f} s; outbox held {during['phonebooth_outbox_depth']:.0f} "
        f"record(s) (oldest {during['phonebooth_outbox_oldest_age_seconds']:.1f} s) mid-outage",
        f"stored after recovery: {len(stored['turns'])} turns, {len(stored['tools'])} tool "
        f"call, {len(stored['usage'])} usage rows, {len(ids)} webhook deliveries — each once",
    ])


async def _all_delivered(stack: CallStack, sid: str) -> bool:
    async with stack.state.db.session() as s:
        statuses = list((await s.execute(
            select(WebhookDelivery.status).where(WebhookDelivery.session_id == sid))).scalars())
        ended = (await s.get(Session, sid))
    return bool(statuses) and all(x != "pending" for x in statuses) and ended is not None \
        and ended.status == "ended"


async def test_call_goes_on_when_the_outbox_is_full(
    cluster: PrivateCluster, settings_factory: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A tiny outbox and the database away: records beyond the bound are refused with an error
    metric and log line, and the caller still gets the answer."""
    caplog.set_level(logging.ERROR, logger="app.outbox.service")
    async with call_stack(settings_factory, monkeypatch,
                          outbox={**OUTBOX, "max_entries": 2}) as stack:
        await stack.add_agent()
        rec = Recorder(stack)
        stack.deepgram.queue_transcript(Q1)
        stack.openai.queue_chat("It ships on Tuesday.")
        try:
            async with stack.call() as call:
                sid = await stack.session_id(call)
                await rec.wait_type("agent.speech_completed", sid=sid)
                await asyncio.to_thread(cluster.stop)
                await stack.say(call, Q1, trail_ms=200)
                await rec.wait_type("turn.completed", sid=sid, n=1, within_s=40)
                answered = [e.event.text for e in of_type(rec.session(sid),
                                                          "agent.speech_started")]
                metrics = await _metrics(stack)
        finally:
            if not cluster.running():
                await asyncio.to_thread(cluster.start)
    assert "It ships on Tuesday." in answered
    assert metrics["phonebooth_outbox_rejected_total"] > 0
    assert metrics["phonebooth_outbox_depth"] <= 2
    assert any("refused because the outbox is full" in r.getMessage() for r in caplog.records)


async def test_answered_from_the_cache_while_the_database_is_away(
    cluster: PrivateCluster, settings_factory: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The database is down before the call comes in: the number is routed from the cached
    table, the session is created through the outbox, the call is answered and recorded."""
    async with call_stack(settings_factory, monkeypatch, outbox=OUTBOX) as stack:
        await stack.add_agent()
        # Let the routing table pick the new agent up (a committed change invalidates it).
        await _until(lambda: _routed(stack), 10, "the routing cache to know the number")
        rec = Recorder(stack)
        stack.deepgram.queue_transcript(Q1)
        stack.openai.queue_chat("It ships on Tuesday.")
        await asyncio.to_thread(cluster.stop)
        try:
            async with stack.call() as call:
                await rec.wait_type("agent.speech_completed")  # the greeting, no database
                await stack.say(call, Q1, trail_ms=200)
                await rec.wait_type("turn.completed", n=1, within_s=40)
            sid = rec.drain()[0].session_id
        finally:
            await asyncio.to_thread(cluster.start)
        await asyncio.wait_for(stack.settled(), 60)
        stored = await _stored(stack, sid)
        async with httpx.AsyncClient(base_url=stack.server.base_url, headers=ADMIN) as c:
            listed = (await c.get(f"/v1/sessions/{sid}")).json()
    assert stored["status"] == "ended"
    assert stored["turns"] == _expected_turns(rec.session(sid))
    assert listed["call_uuid"] == call.call_uuid and listed["status"] == "ended"


async def _routed(stack: CallStack) -> bool:
    from tests.e2e.tools_fixtures import AGENT_NUMBER

    edge = stack.state.extras["app.telephony.plivo"]
    return edge.routes.for_number(AGENT_NUMBER) is not None
