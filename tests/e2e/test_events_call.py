"""What a live call tells the outside world: the event stream over both WebSockets, the agent's
signed webhook (with retries), the stored session (turns, latency, tool calls), usage totals and
the post-call report.

One call covers it all: greeting → a question answered with a webhook tool → the caller barges
in on the long answer → a short reply → the caller hangs up.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.config import Settings
from app.db.models import WebhookDelivery
from app.events.signing import verify_signature
from tests.e2e.tools_fixtures import ADMIN, CallStack, Recorder, call_stack, of_type, types
from tests.events.local_http import LocalHttpServer, Received, ok_json
from tests.fakes.fake_openai import ChatReply, FakeToolCall

pytestmark = pytest.mark.slow

ANSWER = ("Your order A123 shipped on Monday. It should arrive on Tuesday afternoon. "
          "You can track it online at any time with the link in your confirmation email.")
SUMMARY = "The caller asked about order A123, which ships Tuesday."
STAGES = {"vad_stop_to_eou_ms", "eou_to_stt_final_ms", "llm_ttft_ms", "tts_ttfb_ms",
          "first_audio_out_ms", "played_ack_ms", "server_added_ms"}
TIMES = {"stt_final_at_ms", "llm_request_at_ms", "llm_first_token_at_ms", "tts_request_at_ms",
         "tts_first_byte_at_ms"}


class FlakyReceiver:
    """An event webhook endpoint whose first `failures` requests get HTTP 500."""

    def __init__(self, secret: str, failures: int = 2) -> None:
        self.secret = secret
        self.failures = failures
        self.accepted: list[Received] = []
        self.bad_signatures = 0
        self._lock = threading.Lock()
        self._seen = 0

    def __call__(self, r: Received) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self._seen += 1
            if self._seen <= self.failures:
                return 500, {}, b"temporarily broken"
            try:
                verify_signature(self.secret, r.headers, r.body)
            except Exception:
                self.bad_signatures += 1
                return 401, {}, b"bad signature"
            self.accepted.append(r)
        return ok_json()

    def accepted_events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(r.body) for r in self.accepted]


async def read_stream(ws: ClientConnection, sink: list[dict[str, Any]]) -> tuple[int, str]:
    """Collect frames until the server closes; returns (code, reason)."""
    try:
        while True:
            sink.append(json.loads(await ws.recv()))
    except ConnectionClosed as exc:
        return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (0, "")


def by_key(items: list[dict[str, Any]]) -> dict[tuple[str, str, str], float]:
    out: Counter[tuple[str, str, str]] = Counter()
    for u in items:
        out[(u["provider"], u["kind"], u["metric"])] += u["quantity"]
    return dict(out)


async def test_a_call_seen_through_websockets_webhooks_and_the_rest_api(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack:
        receiver = FlakyReceiver(stack.signing_secret, failures=2)
        with LocalHttpServer(receiver) as hooks, LocalHttpServer(
                lambda r: ok_json(b'{"status": "shipped", "eta": "Tuesday"}')) as tool:
            await stack.add_agent(
                tools=[{"name": "get_order", "description": "Look up an order",
                        "parameters": {"type": "object",
                                       "properties": {"order": {"type": "string"}}},
                        "webhook": {"url": tool.url + "/orders", "timeout_s": 5}}],
                tool_settings={"hold_after_ms": 5000},
                webhook_url=hooks.url + "/events",
                post_call={"summary_prompt": "Summarise the call in one sentence."})
            await run_call(stack, receiver, hooks)


async def run_call(stack: CallStack, receiver: FlakyReceiver, hooks: LocalHttpServer) -> None:
    rec = Recorder(stack)
    stack.deepgram.queue_transcript("Where is my order A123?", "Okay thanks that is all.")
    stack.openai.queue_chat(
        ChatReply(tool_calls=[FakeToolCall("get_order", {"order": "A123"}, "call_1")]),
        ANSWER, "You're welcome. Goodbye.", SUMMARY)

    everything: list[dict[str, Any]] = []
    async with connect(f"{stack.server.ws_url}/v1/events", additional_headers=ADMIN) as glob:
        assert json.loads(await glob.recv())["type"] == "stream.subscribed"
        global_reader = asyncio.create_task(read_stream(glob, everything))
        async with stack.call() as call:
            sid = await stack.session_id(call)
            # A per-session subscriber that joins late (browser-style key) gets the replay.
            per_session: list[dict[str, Any]] = []
            url = f"{stack.server.ws_url}/v1/sessions/{sid}/events?since=0&api_key=" \
                  f"{ADMIN['Authorization'].split()[1]}"
            ws = await connect(url)
            hello = json.loads(await ws.recv())
            assert hello["type"] == "stream.subscribed" and hello["session_id"] == sid
            session_reader = asyncio.create_task(read_stream(ws, per_session))

            await rec.wait_type("agent.speech_completed", sid=sid)
            await stack.say(call, "Where is my order A123?", trail_ms=200)
            await rec.wait_for(lambda es: any(e.type == "agent.speech_started"
                                              and e.event.text.startswith("It should arrive")
                                              for e in es), within_s=30)
            await stack.say(call, "Okay thanks that is all.", trail_ms=200)
            await rec.wait_type("turn.completed", n=2, sid=sid, within_s=30)
            await asyncio.sleep(0.3)
        code = await asyncio.wait_for(session_reader, 30)
        ended = await rec.wait_type("session.ended", sid=sid, within_s=30)
        await ws.close()
        await asyncio.sleep(0.2)
        global_reader.cancel()

    published = rec.session(sid)
    check_event_sequence(published)

    # The per-session WebSocket: the whole call, once, in order, then a clean close.
    assert code == (1000, "session ended")
    assert [f["id"] for f in per_session] == [e.id for e in published]
    assert [f["seq"] for f in per_session] == list(range(1, len(published) + 1))
    # The global WebSocket: the same events for this session, in the same order.
    assert [f["id"] for f in everything if f.get("session_id") == sid] == [
        e.id for e in published]

    # The webhook: two 500s, then every event exactly once (by idempotency key), in order.
    await hooks.wait_for(lambda rs: any(json.loads(r.body)["type"] == "session.ended"
                                        for r in receiver.accepted), within_s=30)
    requests = hooks.snapshot()
    first_id = published[0].id
    assert [r.headers["X-Phonebooth-Event-Id"] for r in requests[:3]] == [first_id] * 3
    assert [r.headers["X-Phonebooth-Delivery-Attempt"] for r in requests[:3]] == ["1", "2", "3"]
    delivered = receiver.accepted_events()
    assert receiver.bad_signatures == 0
    assert [d["id"] for d in delivered] == [e.id for e in published]
    assert all(r.headers["X-Phonebooth-Event-Id"] == json.loads(r.body)["id"]
               for r in receiver.accepted)
    await stack.settled()
    rows = await delivery_rows(stack, sid, until_delivered=len(published))
    assert len(rows) == len(published) and {r.status for r in rows} == {"delivered"}
    assert sorted(r.attempts for r in rows) == [1] * (len(rows) - 1) + [3]

    # The post-call report, as delivered with session.ended.
    report = delivered[-1]["data"]["report"]
    assert delivered[-1]["data"]["reason"] == ended[0].event.reason
    assert report["summary"] == SUMMARY
    assert report["interruptions"] == 1 and report["tool_calls"]["by_status"] == {"ok": 1}
    assert {"llm_ttft_ms", "first_audio_out_ms"} <= set(report["latency_ms"])
    for stage in report["latency_ms"].values():
        assert stage["p50"] <= stage["p95"] and stage["n"] >= 1
    await check_records(stack, sid, published, report)


async def delivery_rows(stack: CallStack, sid: str, until_delivered: int) -> list[Any]:
    """The session's webhook_deliveries rows once `until_delivered` of them are marked
    delivered (the receiver sees a request just before its row is updated)."""
    for _ in range(200):
        async with stack.state.db.session() as s:
            rows = list((await s.execute(select(WebhookDelivery).where(
                WebhookDelivery.session_id == sid))).scalars().all())
        if sum(r.status == "delivered" for r in rows) >= until_delivered:
            break
        await asyncio.sleep(0.05)
    return rows


def check_event_sequence(published: list[Any]) -> None:
    names = types(published)
    assert names[0] == "session.started" and names[-1] == "session.ended"
    assert names.count("session.started") == names.count("session.ended") == 1
    assert [e.seq for e in published] == list(range(1, len(published) + 1))
    assert len({e.id for e in published}) == len(published)
    for required in ("user.speech_started", "user.speech_stopped", "user.transcription",
                     "user.turn_completed", "agent.state_changed", "agent.speech_started",
                     "agent.speech_completed", "agent.speech_interrupted", "turn.completed",
                     "turn.metrics", "tool.called", "tool.completed", "session.usage"):
        assert required in names, required
    # Each tool call is reported once (the engine leaves tool.* to the executor).
    assert names.count("tool.called") == names.count("tool.completed") == 1
    assert "tool.failed" not in names
    first = names.index
    assert first("user.turn_completed") < first("tool.called") < first("tool.completed") \
        < first("turn.completed")
    turns = of_type(published, "turn.completed")
    metrics = of_type(published, "turn.metrics")
    assert [t.event.turn_id for t in turns] == [m.event.turn_id for m in metrics]
    for t, m in zip(turns, metrics, strict=True):
        assert t.seq < m.seq
    assert [t.event.interrupted for t in turns] == [True, False]
    assert [t.event.user_text for t in turns] == ["Where is my order A123?",
                                                  "Okay thanks that is all."]


async def check_records(stack: CallStack, sid: str, published: list[Any],
                        report: dict[str, Any]) -> None:
    session = await stack.get(f"/v1/sessions/{sid}")
    assert session["status"] == "ended" and session["report"]["summary"] == SUMMARY
    turns = session["turns"]
    assert [(t["role"], t["text"]) for t in turns] == [
        ("user", "Where is my order A123?"), ("assistant", ANSWER),
        ("user", "Okay thanks that is all."), ("assistant", "You're welcome. Goodbye.")]
    cut, last = turns[1], turns[3]
    # Cut during the second sentence: the first was heard in full, the rest only in part.
    assert cut["interrupted"] and ANSWER.startswith(cut["heard_text"])
    assert cut["heard_text"].startswith("Your order A123 shipped on Monday.")
    assert "track it online" not in cut["heard_text"]
    assert not last["interrupted"] and last["heard_text"] == last["text"]
    for t in (cut, last):
        # Every stage, when each began and ended, and whether the answer was started early.
        assert STAGES | TIMES <= set(t["latency"]) <= STAGES | TIMES | {"preemptive"}
        assert t["latency"]["first_audio_out_ms"] > 0 and t["latency"]["llm_ttft_ms"] > 0
    assert [(c["name"], c["status"], c["arguments"]) for c in session["tool_calls"]] == [
        ("get_order", "ok", {"order": "A123"})]

    # Usage: what the adapters reported (session.usage) is what /v1/usage and the report sum.
    reported = by_key([e.event.payload() for e in of_type(published, "session.usage")])
    assert {k[:2] for k in reported} == {("deepgram", "stt"), ("openai", "llm"),
                                         ("elevenlabs", "tts")}
    stored = by_key(session["usage"])
    assert stored == pytest.approx(reported)
    assert by_key(report["usage"]) == pytest.approx(reported)
    usage = await stack.get("/v1/usage", group_by="provider")
    totals = {(i["key"], i["kind"], i["metric"]): i["quantity"] for i in usage["items"]}
    assert totals == pytest.approx(reported)
    # The summary request's tokens count too (it is usage of this call).
    llm_requests = len(stack.openai.for_endpoint("chat"))
    assert llm_requests == 4
    assert reported[("openai", "llm", "input_tokens")] > 0
