"""Webhook tools through the ToolExecutor: signed requests, schema validation, timeouts,
cancellation, hold line, state — recorded in tool_calls via the event sinks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from app.agent_config import ToolConfig, ToolsSettings
from app.calls.state_store import SessionStateStore
from app.db.engine import Database
from app.db.models import Session, ToolCallRecord
from app.events.service import EventsService
from app.events.signing import SIGNATURE_HEADER, sign
from app.tools.executor import CANCELLED_RESULT, ToolExecutor, ToolSession
from app.tools.webhook import verify_tool_signature
from pipelines import events as ev
from providers.base import ToolCall
from tests.events.conftest import make_session
from tests.events.local_http import LocalHttpServer, Received

SECRET = "whsec_tools_test"

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "minLength": 1},
                   "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city"],
    "additionalProperties": False,
}


def weather_tool(url: str, **webhook: Any) -> ToolConfig:
    return ToolConfig.model_validate({
        "name": "get_weather", "description": "Weather for a city",
        "parameters": WEATHER_SCHEMA, "webhook": {"url": url, **webhook},
    })


def signed_endpoint(delay_s: float = 0.0, status: int = 200,
                    body: dict[str, Any] | None = None) -> Callable[[Received], Any]:
    """A tool endpoint that refuses unsigned or stale requests, like a real receiver should."""

    def respond(r: Received) -> tuple[int, dict[str, str], bytes]:
        raw = r.body if r.method != "GET" else r.query["payload"][0].encode()
        if not verify_tool_signature(SECRET, r.headers, raw):
            return 401, {}, b"bad signature"
        if delay_s:
            time.sleep(delay_s)
        req = json.loads(raw)
        out = body if body is not None else {
            "forecast": f"sunny in {req['arguments']['city']}", "echo": req}
        return status, {"Content-Type": "application/json"}, json.dumps(out).encode()

    return respond


class Recorder:
    def __init__(self, events: EventsService | None = None) -> None:
        self.events = events
        self.seen: list[ev.Event] = []

    def __call__(self, e: ev.Event) -> None:
        self.seen.append(e)
        if self.events is not None:
            self.events.publish(e)

    @property
    def types(self) -> list[str]:
        return [e.type for e in self.seen]


async def _tool_rows(database: Database, sid: str) -> list[ToolCallRecord]:
    async with database.session() as s:
        return list((await s.execute(
            select(ToolCallRecord).where(ToolCallRecord.session_id == sid)
        )).scalars())


async def test_webhook_tool_call_is_signed_and_completes(
    database: Database, events: EventsService
) -> None:
    sid, _ = await make_session(database, status="active")
    rec = Recorder(events)
    with LocalHttpServer(signed_endpoint()) as server:
        tool = weather_tool(server.url + "/weather", headers={"X-Api-Key": "k1"})
        ctx = ToolSession(session_id=sid, call_uuid="cu-1", signing_secret=SECRET,
                          state={"customer": "ada", "_internal": 1})
        executor = ToolExecutor([tool], ctx, rec)
        result = await executor(ToolCall(id="call_1", name="get_weather",
                                         arguments={"city": "Paris"}))
        (req,) = server.snapshot()
    await executor.aclose()
    assert result["forecast"] == "sunny in Paris"
    assert result["echo"] == {"session_id": sid, "call_uuid": "cu-1", "call_id": "call_1",
                              "tool": "get_weather", "arguments": {"city": "Paris"},
                              "state": {"customer": "ada"}}  # reserved keys stay private
    assert req.headers["X-Api-Key"] == "k1"
    assert req.headers["Content-Type"] == "application/json"
    assert rec.types == ["tool.called", "tool.completed", "tool.executed"]
    await events.flush()
    (row,) = await _tool_rows(database, sid)
    assert row.status == "ok" and row.name == "get_weather" and row.latency_ms is not None
    assert row.latency_ms > 0 and row.arguments == {"city": "Paris"}
    assert row.result["forecast"] == "sunny in Paris"


def test_signature_helper_rejects_tampering_and_replays() -> None:
    body = b'{"tool":"x"}'
    good = {SIGNATURE_HEADER: sign(SECRET, body)}
    assert verify_tool_signature(SECRET, good, body)
    assert verify_tool_signature(SECRET, {k.lower(): v for k, v in good.items()}, body)
    assert not verify_tool_signature(SECRET, good, body + b" ")
    assert not verify_tool_signature("whsec_other", good, body)
    assert not verify_tool_signature(SECRET, {}, body)
    old = {SIGNATURE_HEADER: sign(SECRET, body, timestamp=int(time.time()) - 301)}
    assert not verify_tool_signature(SECRET, old, body)
    assert verify_tool_signature(SECRET, old, body, tolerance_s=600)


@pytest.mark.parametrize("arguments,field", [
    ({}, "(root)"),
    ({"city": ""}, "city"),
    ({"city": "Paris", "days": 30}, "days"),
    ({"city": "Paris", "unit": "F"}, "(root)"),
    ('{"city": ', "(root)"),
])
async def test_invalid_arguments_never_reach_the_webhook(
    database: Database, events: EventsService, arguments: Any, field: str
) -> None:
    sid, _ = await make_session(database, status="active")
    rec = Recorder(events)
    with LocalHttpServer(signed_endpoint()) as server:
        executor = ToolExecutor([weather_tool(server.url)],
                                ToolSession(session_id=sid, signing_secret=SECRET), rec)
        result = await executor(ToolCall(id="c", name="get_weather", arguments=arguments))
        assert server.snapshot() == []
    assert result["error"]["type"] == "invalid_arguments"
    if isinstance(arguments, dict):
        assert field in [e["field"] for e in result["error"]["errors"]]
    assert rec.types == ["tool.called", "tool.failed"]
    await events.flush()
    (row,) = await _tool_rows(database, sid)
    assert row.status == "error" and "arguments" in (row.error or "")


async def test_unknown_tool_is_a_structured_error() -> None:
    rec = Recorder()
    executor = ToolExecutor([], ToolSession(session_id="s"), rec)
    result = await executor(ToolCall(id="c", name="launch_rockets", arguments={}))
    assert result["error"]["type"] == "unknown_tool"
    assert rec.types == ["tool.called", "tool.failed"]


async def test_slow_tool_times_out_cleanly(database: Database, events: EventsService) -> None:
    sid, _ = await make_session(database, status="active")
    rec = Recorder(events)
    with LocalHttpServer(signed_endpoint(delay_s=2.0)) as server:
        executor = ToolExecutor([weather_tool(server.url, timeout_s=0.3)],
                                ToolSession(session_id=sid, signing_secret=SECRET), rec)
        result = await executor(ToolCall(id="c", name="get_weather",
                                         arguments={"city": "Oslo"}))
    assert result == {"error": {"type": "timeout",
                                "message": "the tool did not answer within 0.3 s"}}
    failed = rec.seen[-1]
    assert isinstance(failed, ev.ToolFailed) and failed.status == "timeout"
    await events.flush()
    (row,) = await _tool_rows(database, sid)
    assert row.status == "timeout" and row.latency_ms is not None and row.latency_ms >= 300


async def test_http_errors_and_plain_text_results() -> None:
    rec = Recorder()
    with LocalHttpServer(signed_endpoint(status=503, body={"error": "down"})) as server:
        executor = ToolExecutor([weather_tool(server.url)],
                                ToolSession(session_id="s", signing_secret=SECRET), rec)
        result = await executor(ToolCall(id="c", name="get_weather", arguments={"city": "X"}))
        await executor.aclose()
    assert result["error"]["type"] == "http_error" and result["error"]["status"] == 503

    def text(r: Received) -> tuple[int, dict[str, str], bytes]:
        return 200, {"Content-Type": "text/plain"}, b"It is raining."

    with LocalHttpServer(text) as server:
        executor = ToolExecutor([weather_tool(server.url, method="GET")],
                                ToolSession(session_id="s", signing_secret=SECRET), rec)
        result = await executor(ToolCall(id="c2", name="get_weather", arguments={"city": "X"}))
        (req,) = server.snapshot()
        await executor.aclose()
    assert result == "It is raining."
    # GET carries the JSON document in `payload`, signed over exactly those bytes.
    payload = req.query["payload"][0].encode()
    assert verify_tool_signature(SECRET, req.headers, payload)
    assert json.loads(payload)["arguments"] == {"city": "X"}


async def test_barge_in_cancellation_is_recorded(
    database: Database, events: EventsService
) -> None:
    sid, _ = await make_session(database, status="active")
    rec = Recorder(events)
    with LocalHttpServer(signed_endpoint(delay_s=1.5)) as server:
        executor = ToolExecutor([weather_tool(server.url)],
                                ToolSession(session_id=sid, signing_secret=SECRET), rec)
        # 1) the conversation cancels the task awaiting the tool
        task = asyncio.create_task(executor(ToolCall(id="c1", name="get_weather",
                                                     arguments={"city": "Rome"})))
        await server.wait_for(lambda reqs: len(reqs) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # 2) the host cancels running tools; the awaiting caller gets a result, not an error
        task = asyncio.create_task(executor(ToolCall(id="c2", name="get_weather",
                                                     arguments={"city": "Rome"})))
        await server.wait_for(lambda reqs: len(reqs) == 2)
        assert executor.running == 1 and executor.cancel_all() == 1
        assert await task == CANCELLED_RESULT
        await executor.aclose()
    assert [(e.type, getattr(e, "status", None)) for e in rec.seen] == [
        ("tool.called", None), ("tool.failed", "cancelled"),
        ("tool.called", None), ("tool.failed", "cancelled"),
    ]
    await events.flush()
    rows = await _tool_rows(database, sid)
    assert sorted(r.status for r in rows) == ["cancelled", "cancelled"]


async def test_hold_line_only_for_slow_tools() -> None:
    said: list[str] = []

    async def say(text: str) -> None:
        said.append(text)

    settings = ToolsSettings(hold_after_ms=100, hold_message="One moment please.")
    with LocalHttpServer(signed_endpoint()) as fast, \
            LocalHttpServer(signed_endpoint(delay_s=0.6)) as slow:
        fast_tool = weather_tool(fast.url)
        slow_tool = ToolConfig.model_validate({
            **weather_tool(slow.url).model_dump(), "name": "slow_weather",
            "options": {"hold_message": "Let me check that."}})
        executor = ToolExecutor([fast_tool, slow_tool],
                                ToolSession(session_id="s", signing_secret=SECRET, say=say,
                                            settings=settings), Recorder())
        await executor(ToolCall(id="a", name="get_weather", arguments={"city": "X"}))
        assert said == []
        result = await executor(ToolCall(id="b", name="slow_weather", arguments={"city": "X"}))
        await executor.aclose()
    assert result["forecast"] == "sunny in X"
    assert said == ["Let me check that."]


async def test_parallel_slow_tools_share_one_hold_line() -> None:
    said: list[str] = []

    async def say(text: str) -> None:
        said.append(text)

    settings = ToolsSettings(hold_after_ms=100, hold_message="One moment please.")
    with LocalHttpServer(signed_endpoint(delay_s=0.5)) as slow:
        executor = ToolExecutor([weather_tool(slow.url)],
                                ToolSession(session_id="s", signing_secret=SECRET, say=say,
                                            settings=settings), Recorder())
        results = await asyncio.gather(*(
            executor(ToolCall(id=f"c{i}", name="get_weather", arguments={"city": str(i)}))
            for i in range(3)))
        # A later slow call (the next LLM round) gets its own hold line.
        await executor(ToolCall(id="c9", name="get_weather", arguments={"city": "9"}))
        await executor.aclose()
    assert [r["forecast"] for r in results] == ["sunny in 0", "sunny in 1", "sunny in 2"]
    assert said == ["One moment please.", "One moment please."]


async def test_tools_read_and_update_session_state(database: Database) -> None:
    sid, _ = await make_session(database, status="active")
    store = SessionStateStore(database.sessionmaker)
    await store.patch(sid, {"customer": {"name": "Ada"}, "tries": 1})
    await store.patch(sid, {"_transfer": {"target": "+1"}}, allow_reserved=True)
    reply = {"order": "A-17", "state_patch": {"customer": {"tier": "gold"}, "tries": None}}
    with LocalHttpServer(signed_endpoint(body=reply)) as server:
        ctx = ToolSession(session_id=sid, signing_secret=SECRET, state_store=store)
        ctx.state.update(await store.get(sid))
        executor = ToolExecutor([weather_tool(server.url)], ctx, Recorder())
        result = await executor(ToolCall(id="c", name="get_weather", arguments={"city": "X"}))
        (req,) = server.snapshot()
        await executor.aclose()
    assert json.loads(req.body)["state"] == {"customer": {"name": "Ada"}, "tries": 1}
    assert result == {"order": "A-17"}  # the patch is not shown to the LLM
    assert await store.get(sid) == {"customer": {"name": "Ada", "tier": "gold"}}
    async with database.session() as s:
        row = await s.get(Session, sid)
        assert row is not None and row.state["_transfer"] == {"target": "+1"}
