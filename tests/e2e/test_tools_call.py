"""Tools on live calls: a caller (Piper speech through the Plivo simulator) talks to an agent
whose LLM (fake OpenAI) calls webhook tools on a local HTTP server and the builtins; the real
server runs VAD, turn detection, the tool executor, Plivo REST actions and the event sinks."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from lxml import etree

from app.config import Settings
from app.tools.webhook import verify_tool_signature
from tests.e2e.tools_fixtures import CallStack, Recorder, call_stack, of_type
from tests.events.local_http import LocalHttpServer, Received, ok_json
from tests.fakes.fake_openai import ChatReply, FakeToolCall

pytestmark = pytest.mark.slow

ORDER_PARAMS = {"type": "object", "properties": {"order": {"type": "string"}},
                "required": ["order"]}


def order_tool(url: str, *, timeout_s: float = 5.0, **extra: Any) -> dict[str, Any]:
    return {"name": "get_order", "description": "Look up an order by its number",
            "parameters": ORDER_PARAMS, "webhook": {"url": url, "timeout_s": timeout_s}, **extra}


def signed_responder(stack: CallStack, *, delay_s: float = 0.0,
                     body: bytes = b'{"status": "shipped", "eta": "Tuesday"}'
                     ) -> Callable[[Received], tuple[int, dict[str, str], bytes]]:
    """A tool endpoint that refuses anything not signed by this server."""
    def respond(r: Received) -> tuple[int, dict[str, str], bytes]:
        if not verify_tool_signature(stack.signing_secret, r.headers, r.body):
            return 401, {}, b"bad signature"
        time.sleep(delay_s)  # the server's own thread: a slow tool, not a slow test loop
        return ok_json(body)
    return respond


def chat_messages(stack: CallStack, n: int) -> list[dict[str, Any]]:
    """The messages of the n-th chat request the agent made (0-based)."""
    return stack.openai.for_endpoint("chat")[n].json["messages"]


def tool_results(messages: list[dict[str, Any]]) -> list[Any]:
    return [json.loads(m["content"]) for m in messages if m["role"] == "tool"]


def spoken(envs: list[Any]) -> list[str]:
    return [e.event.text for e in of_type(envs, "agent.speech_started")]


async def greet_and_ask(stack: CallStack, call: Any, rec: Recorder, text: str) -> str:
    sid = await stack.session_id(call)
    await rec.wait_type("agent.speech_completed", sid=sid)  # the greeting was heard
    await stack.say(call, text, trail_ms=200)
    return sid


async def tool_rows(stack: CallStack, sid: str) -> list[dict[str, Any]]:
    await stack.settled()
    return (await stack.get(f"/v1/sessions/{sid}"))["tool_calls"]


async def test_webhook_tool_turn_completes(settings_factory: Callable[..., Settings],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack:
        with LocalHttpServer(signed_responder(stack)) as tool_server:
            await stack.add_agent(tools=[order_tool(tool_server.url + "/orders")],
                                  tool_settings={"hold_after_ms": 5000})
            rec = Recorder(stack)
            stack.deepgram.queue_transcript("Where is my order A123?")
            stack.openai.queue_chat(
                ChatReply(tool_calls=[FakeToolCall("get_order", {"order": "A123"}, "call_1")]),
                "Your order ships on Tuesday.")
            async with stack.call() as call:
                sid = await greet_and_ask(stack, call, rec, "Where is my order A123?")
                await rec.wait_type("turn.completed", sid=sid, within_s=30)

            # The endpoint got one signed request describing the call.
            (req,) = tool_server.snapshot()
            payload = json.loads(req.body)
            assert payload["session_id"] == sid and payload["call_uuid"] == call.call_uuid
            assert (payload["tool"], payload["arguments"], payload["call_id"]) == (
                "get_order", {"order": "A123"}, "call_1")
            assert req.headers["X-Phonebooth-Signature"].startswith("t=")

        # The LLM's second round saw the tool's answer, and the agent spoke its reply.
        assert tool_results(chat_messages(stack, 1)) == [{"status": "shipped", "eta": "Tuesday"}]
        envs = rec.session(sid)
        assert "Your order ships on Tuesday." in spoken(envs)
        assert [e.event.call_id for e in of_type(envs, "tool.called")] == ["call_1"]
        (done,) = of_type(envs, "tool.completed")
        assert done.event.result == {"status": "shipped", "eta": "Tuesday"}
        assert not of_type(envs, "tool.failed")
        (turn,) = of_type(envs, "turn.completed")
        assert turn.event.agent_text == "Your order ships on Tuesday."
        assert not turn.event.interrupted
        (row,) = await tool_rows(stack, sid)
        assert row["name"] == "get_order" and row["status"] == "ok"
        assert row["latency_ms"] is not None and row["latency_ms"] >= 0


async def test_slow_tool_says_the_hold_line_once_then_times_out(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack:
        with LocalHttpServer(signed_responder(stack, delay_s=4.0)) as tool_server:
            await stack.add_agent(tools=[order_tool(tool_server.url + "/orders", timeout_s=2.0)],
                                  tool_settings={"hold_after_ms": 300,
                                                 "hold_message": "One moment please."})
            rec = Recorder(stack)
            stack.deepgram.queue_transcript("Where is my order A123?")
            stack.openai.queue_chat(
                ChatReply(tool_calls=[FakeToolCall("get_order", {"order": "A123"}, "call_1")]),
                "Sorry, the order system is slow right now.")
            async with stack.call() as call:
                sid = await greet_and_ask(stack, call, rec, "Where is my order A123?")
                await rec.wait_type("turn.completed", sid=sid, within_s=30)

        envs = rec.session(sid)
        # The hold line played exactly once, while the tool ran, then the LLM's answer.
        said = spoken(envs)
        assert said.count("One moment please.") == 1
        assert said[-2:] == ["One moment please.", "Sorry, the order system is slow right now."]
        hold = next(e for e in of_type(envs, "agent.speech_started")
                    if e.event.text == "One moment please.")
        (failed,) = of_type(envs, "tool.failed")
        assert failed.seq > hold.seq  # spoken before the tool gave up
        assert (failed.event.status, failed.event.name) == ("timeout", "get_order")
        assert failed.event.latency_ms >= 1900
        # The LLM got a structured error, not silence; the hold line is not in its context.
        msgs = chat_messages(stack, 1)
        (result,) = tool_results(msgs)
        assert result["error"]["type"] == "timeout"
        assert not any("One moment" in (m.get("content") or "") for m in msgs)
        (turn,) = of_type(envs, "turn.completed")
        assert turn.event.agent_text == ("One moment please. "
                                         "Sorry, the order system is slow right now.")
        (row,) = await tool_rows(stack, sid)
        assert row["status"] == "timeout"


async def test_barge_in_over_the_hold_line_cancels_the_tool(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    hold = ("Please stay on the line while I look that up in our order system, "
            "it can take a little while.")
    async with call_stack(settings_factory, monkeypatch) as stack:
        with LocalHttpServer(signed_responder(stack, delay_s=8.0)) as tool_server:
            await stack.add_agent(tools=[order_tool(tool_server.url + "/orders", timeout_s=10)],
                                  tool_settings={"hold_after_ms": 200, "hold_message": hold})
            rec = Recorder(stack)
            stack.deepgram.queue_transcript("Where is my order A123?",
                                            "Actually never mind cancel that.")
            stack.openai.queue_chat(
                ChatReply(tool_calls=[FakeToolCall("get_order", {"order": "A123"}, "call_1")]),
                "No problem, I stopped the lookup.")
            async with stack.call() as call:
                sid = await greet_and_ask(stack, call, rec, "Where is my order A123?")
                await rec.wait_for(lambda es: any(
                    e.type == "agent.speech_started" and e.event.text.startswith("Please stay")
                    for e in es), within_s=20)
                await stack.say(call, "Actually never mind cancel that.", lead_ms=600,
                                trail_ms=200)
                await rec.wait_type("turn.completed", n=2, sid=sid, within_s=30)

        envs = rec.session(sid)
        (cut,) = of_type(envs, "agent.speech_interrupted")
        # What the caller heard of the hold line is a proper prefix of it.
        assert cut.event.heard_text and hold.startswith(cut.event.heard_text)
        assert len(cut.event.heard_text) < len(hold)
        (failed,) = of_type(envs, "tool.failed")
        assert failed.event.status == "cancelled" and failed.seq > cut.seq - 3
        assert not of_type(envs, "tool.completed")
        first, second = of_type(envs, "turn.completed")
        assert first.event.interrupted and first.event.heard_text == cut.event.heard_text
        assert second.event.user_text == "Actually never mind cancel that."
        assert second.event.agent_text == "No problem, I stopped the lookup."
        # The next request carries the cancelled call's result; the hold line is not context.
        msgs = chat_messages(stack, 1)
        assert tool_results(msgs) == [{"error": "cancelled: the caller interrupted"}]
        assert msgs[-1] == {"role": "user", "content": "Actually never mind cancel that."}
        assert not any("stay on the line" in (m.get("content") or "") for m in msgs)
        (row,) = await tool_rows(stack, sid)
        assert row["status"] == "cancelled"


async def test_end_call_says_goodbye_and_hangs_up_through_plivo(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack:
        await stack.add_agent(tools=[{"name": "end_call", "builtin": "end_call",
                                      "options": {"goodbye": "Thanks for calling, goodbye!"}}])
        rec = Recorder(stack)
        stack.deepgram.queue_transcript("That is all thank you.")
        stack.openai.queue_chat(ChatReply(tool_calls=[FakeToolCall("end_call", {}, "call_end")]))
        async with stack.call() as call:
            sid = await greet_and_ask(stack, call, rec, "That is all thank you.")
            await call.wait_closed(within_s=30)
        (ended,) = await rec.wait_type("session.ended", sid=sid)
        assert call.result.closed_by == "api"  # Plivo ended it because the server asked to
        (delete,) = stack.rest.calls_to("DELETE", f"/Call/{call.call_uuid}/")
        assert delete.status == 204
        envs = rec.session(sid)
        assert "Thanks for calling, goodbye!" in [e.event.text for e in
                                                 of_type(envs, "agent.speech_completed")]
        bye = of_type(envs, "agent.speech_completed")[-1]
        assert delete.at >= bye.event.mono  # hung up once the goodbye was heard
        (done,) = of_type(envs, "tool.completed")
        assert done.event.name == "end_call"
        assert ended.event.reason == "agent_ended"
        await stack.settled()
        session = await stack.get(f"/v1/sessions/{sid}")
        assert session["end_reason"] == "agent_ended" and session["status"] == "ended"
        assert [t["status"] for t in session["tool_calls"]] == ["ok"]


async def test_transfer_call_posts_the_transfer_and_serves_the_dial(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack:
        await stack.add_agent(tools=[{
            "name": "transfer_call", "builtin": "transfer_call",
            "options": {"targets": {"sales": "+14155550123"},
                        "message": "Connecting you to sales now."}}])
        rec = Recorder(stack)
        stack.deepgram.queue_transcript("I want to talk to sales.")
        stack.openai.queue_chat(ChatReply(tool_calls=[
            FakeToolCall("transfer_call", {"target": "sales"}, "call_xfer")]))
        async with stack.call() as call:
            sid = await greet_and_ask(stack, call, rec, "I want to talk to sales.")
            await call.wait_closed(within_s=30)
            await call.wait_for(lambda: call.call_uuid in stack.transfer_docs, within_s=10)
        (ended,) = await rec.wait_type("session.ended", sid=sid)
        (post,) = stack.rest.calls_to("POST", f"/Call/{call.call_uuid}/")
        assert post.status == 202 and post.body["legs"] == "aleg"
        assert post.body["aleg_url"] == f"{stack.server.base_url}/plivo/transfer/{sid}"
        dial = etree.fromstring(stack.transfer_docs[call.call_uuid].encode()).find("Dial")
        assert dial.find("Number").text == "14155550123"
        assert call.result.closed_by == "server" and call.result.close_code == 1000
        envs = rec.session(sid)
        assert "Connecting you to sales now." in [e.event.text for e in
                                                 of_type(envs, "agent.speech_completed")]
        (moved,) = of_type(envs, "call.transferred")
        assert (moved.event.target, moved.event.mode) == ("+14155550123", "cold")
        assert ended.event.reason == "transferred"
        await stack.settled()
        session = await stack.get(f"/v1/sessions/{sid}")
        assert session["end_reason"] == "transferred"
        assert [(t["name"], t["status"]) for t in session["tool_calls"]] == [
            ("transfer_call", "ok")]


async def test_collect_digits_by_voice_and_keypad_is_not_a_barge_in(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack:
        await stack.add_agent(tools=[{"name": "collect_digits", "builtin": "collect_digits",
                                      "options": {"timeout_s": 20}}])
        rec = Recorder(stack)
        stack.deepgram.queue_transcript("I want to check my balance.", "one two three four")
        stack.openai.queue_chat(
            ChatReply(tool_calls=[FakeToolCall(
                "collect_digits", {"prompt": "Please say your PIN.", "num_digits": 4}, "c1")]),
            ChatReply(tool_calls=[FakeToolCall(
                "collect_digits", {"prompt": "Now key in your account number and press pound."},
                "c2")]),
            "Thanks, you are verified.")
        async with stack.call() as call:
            sid = await greet_and_ask(stack, call, rec, "I want to check my balance.")

            def prompt(kind: str, text: str) -> Callable[[list[Any]], bool]:
                return lambda es: any(e.type == kind and e.event.text == text for e in es)
            await rec.wait_for(prompt("agent.speech_completed", "Please say your PIN."),
                               within_s=20)
            await stack.say(call, "one two three four", trail_ms=300)
            # Keys typed ahead, while the second prompt still plays, are the tool's input too.
            await rec.wait_for(prompt("agent.speech_started",
                                      "Now key in your account number and press pound."),
                               within_s=20)
            for key in "5678#":
                await call.send_dtmf(key)
            await rec.wait_type("turn.completed", sid=sid, within_s=30)

    envs = rec.session(sid)
    done = of_type(envs, "tool.completed")
    assert [(e.event.call_id, e.event.result) for e in done] == [
        ("c1", {"digits": "1234"}), ("c2", {"digits": "5678"})]
    # The spoken digits were input for the tool: no barge-in, no turn of their own.
    assert not of_type(envs, "agent.speech_interrupted", "agent.false_interruption",
                       "tool.failed")
    assert [e.event.text for e in of_type(envs, "user.turn_completed")] == [
        "I want to check my balance."]
    assert [e.event.digit for e in of_type(envs, "user.dtmf")] == list("5678#")
    (turn,) = of_type(envs, "turn.completed")
    assert turn.event.agent_text.endswith("Thanks, you are verified.")
    assert tool_results(chat_messages(stack, 2)) == [{"digits": "1234"}, {"digits": "5678"}]
