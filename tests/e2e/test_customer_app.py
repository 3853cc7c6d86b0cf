"""Customer WebSocket apps on live calls, through the Plivo path.

Real parts: the server (uvicorn on 127.0.0.1, call host, VAD and end-of-turn models), the Plivo
simulator as the caller, and the customer app: a WebSocket server on 127.0.0.1 scripted message
by message (`RawApp`). Vendors are protocol-level fakes (OpenAI, Deepgram, ElevenLabs).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from app.config import Settings
from app.events.signing import SESSION_ID_HEADER, connection_signature_message, verify_signature
from pipelines.audio.g711 import ulaw_encode
from tests.e2e.customer_app_fixtures import AppConn, RawApp
from tests.e2e.test_tools_call import chat_messages, greet_and_ask, spoken, tool_results
from tests.e2e.tools_fixtures import CallStack, Recorder, call_stack, of_type, script_order_lookup
from tests.fakes.fake_openai import ChatReply, FakeToolCall

pytestmark = pytest.mark.slow

ORDER_TOOL = {"name": "get_order", "description": "Look up an order by its number",
              "parameters": {"type": "object", "properties": {"order": {"type": "string"}},
                             "required": ["order"]},
              "websocket": True}
GOODBYE = "Sorry, something broke on our side. Goodbye."


def app_agent(app: RawApp, **extra: Any) -> dict[str, Any]:
    return {"websocket_url": app.url, "failure_goodbye": GOODBYE, **extra}


def assert_signed(stack: CallStack, conn: AppConn, url: str) -> str:
    sid = conn.headers[SESSION_ID_HEADER]
    verify_signature(stack.signing_secret, conn.headers, connection_signature_message(sid, url))
    return sid


async def test_managed_mode_app_runs_the_tool_and_sees_the_call(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async def on_message(conn: AppConn, msg: dict[str, Any]) -> None:
        if msg["type"] == "tool.called" and msg.get("respond"):
            await conn.send({"type": "tool.result", "id": msg["id"],
                             "result": {"status": "shipped", "eta": "Tuesday"}})

    async with call_stack(settings_factory, monkeypatch) as stack, RawApp(on_message) as app:
        await stack.add_agent(tools=[ORDER_TOOL], websocket_headers={"X-Team": "billing"},
                              **app_agent(app))
        rec = Recorder(stack)
        script_order_lookup(stack, "Your order ships on Tuesday.")
        async with stack.call() as call:
            sid = await greet_and_ask(stack, call, rec, "Where is my order A123?")
            await rec.wait_type("turn.completed", sid=sid, within_s=30)
        await app.wait_message("session.ended")
        (conn,) = app.conns
        await asyncio.wait_for(conn.closed.wait(), 10)

    # The upgrade was signed for this session and URL, and carried the agent's header.
    assert assert_signed(stack, conn, app.url) == sid
    assert conn.headers["X-Team"] == "billing"
    hello = conn.messages[0]
    assert (hello["type"], hello["agent_session_id"], hello["call_id"], hello["mode"],
            hello["resumed"]) == ("session.started", sid, call.call_uuid, "managed", False)
    # The app answered the tool; the LLM saw its result and the caller heard the answer.
    (called,) = [m for m in conn.of_type("tool.called")]
    assert (called["id"], called["name"], called["arguments"], called["respond"]) == (
        "call_1", "get_order", {"order": "A123"}, True)
    assert tool_results(chat_messages(stack, 1)) == [{"status": "shipped", "eta": "Tuesday"}]
    assert "Your order ships on Tuesday." in spoken(rec.session(sid))
    # The app saw the call as it went: the same events as the bus, in order, ended last.
    got = [m["type"] for m in conn.messages]
    for name in ("user.speech_started", "user.turn_completed", "agent.speech_started",
                 "tool.completed", "turn.completed"):
        assert name in got
    assert got[-1] == "session.ended"
    assert not conn.of_type("error")


async def test_text_mode_app_writes_the_answers(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    tasks: set[asyncio.Task[None]] = set()

    async def answer(conn: AppConn, msg: dict[str, Any]) -> None:
        rid = msg["request_id"]
        user = [m["content"] for m in msg["messages"] if m["role"] == "user"][-1]
        await conn.send({"type": "agent_session.extend_wait", "seconds": 2})
        await asyncio.sleep(1.2)  # longer than reply_timeout_s: extend_wait covers it
        for i, word in enumerate(["You", " said:", f" {user}"]):
            await conn.send({"type": "text", "token": word, "last": i == 2, "request_id": rid})

    async def on_message(conn: AppConn, msg: dict[str, Any]) -> None:
        # Requests are answered side by side: a preemptive one may be followed by another.
        if msg["type"] == "llm.request":
            task = asyncio.create_task(answer(conn, msg))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async with call_stack(settings_factory, monkeypatch) as stack, RawApp(on_message) as app:
        await stack.add_agent(mode="text", websocket_settings={"reply_timeout_s": 1.0},
                              **app_agent(app))
        rec = Recorder(stack)
        stack.deepgram.queue_transcript("What time is it?")
        async with stack.call() as call:
            sid = await greet_and_ask(stack, call, rec, "What time is it?")
            await rec.wait_type("turn.completed", sid=sid, within_s=30)
        await app.wait_message("session.ended")

    (conn,) = app.conns
    req = conn.of_type("llm.request")[-1]
    assert req["messages"][0]["role"] == "system"
    assert {"role": "user", "content": "What time is it?"} in req["messages"]
    (turn,) = of_type(rec.session(sid), "turn.completed")
    assert turn.event.agent_text == "You said: What time is it?"
    assert not stack.openai.for_endpoint("chat")  # the agent's own LLM was never asked
    assert not conn.of_type("error")


async def test_text_mode_interruption_cancels_the_apps_stream(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    long_answer = " ".join(["This is a long answer that goes on and on."] * 8)

    async def on_message(conn: AppConn, msg: dict[str, Any]) -> None:
        if msg["type"] == "llm.request":
            await conn.send({"type": "text", "token": long_answer, "last": False})

    async with call_stack(settings_factory, monkeypatch) as stack, RawApp(on_message) as app:
        await stack.add_agent(mode="text", **app_agent(app))
        rec = Recorder(stack)
        stack.deepgram.queue_transcript("Tell me everything.", "Stop please.")
        async with stack.call() as call:
            sid = await greet_and_ask(stack, call, rec, "Tell me everything.")
            await rec.wait_type("agent.speech_started", sid=sid, n=2, within_s=30)
            await asyncio.sleep(1.0)
            await stack.say(call, "Stop please.", trail_ms=300)
            await rec.wait_type("agent.speech_interrupted", sid=sid, within_s=20)
            cancelled = await app.wait_message("llm.cancelled")
    assert cancelled[0]["request_id"] == app.conns[0].of_type("llm.request")[0]["request_id"]


async def test_audio_mode_app_hears_the_caller_and_speaks(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    tone = ulaw_encode((np.sin(np.arange(8000) * 2 * np.pi * 440 / 8000) * 8000)
                       .astype(np.int16))

    async def on_message(conn: AppConn, msg: dict[str, Any]) -> None:
        if msg.get("event") == "start":
            for i in range(0, len(tone), 160):
                await conn.send({"event": "playAudio", "media": {
                    "contentType": "audio/x-mulaw", "sampleRate": 8000,
                    "payload": base64.b64encode(tone[i:i + 160]).decode()}})
            await conn.send({"event": "checkpoint", "streamId": "x", "name": "tone"})
        elif msg.get("event") == "dtmf":
            await conn.send({"event": "clearAudio"})

    async with call_stack(settings_factory, monkeypatch) as stack, RawApp(on_message) as app:
        await stack.add_agent(mode="audio", **app_agent(app))
        async with stack.call() as call:
            (played,) = await app.wait_message("playedStream")
            assert played["name"] == "tone"
            assert call.agent_spoke
            await stack.say(call, "Hello there.")
            await call.send_dtmf("5")
            await app.wait_message("clearedAudio")
        await app.wait_message("stop")

    (conn,) = app.conns
    (start,) = conn.of_type("start")
    assert start["start"]["callId"] == call.call_uuid
    assert start["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000}
    media = conn.of_type("media")
    assert len(media) > 50  # the caller's audio, 20 ms at a time
    loud = [base64.b64decode(m["media"]["payload"]) for m in media]
    assert all(len(p) == 160 for p in loud)
    assert conn.of_type("dtmf")[0]["dtmf"] == {"digit": "5"}
    # An audio-mode app gets no engine events (it has no engine), only the session's own.
    assert not conn.of_type("user.speech_started") and not conn.of_type("agent.speech_started")
    assert conn.of_type("session.started") and conn.of_type("session.ended")


async def test_unreachable_app_gets_the_caller_an_apology(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack, \
            RawApp(refuse=True) as app:
        await stack.add_agent(mode="text", websocket_settings={"connect_attempts": 2},
                              **app_agent(app))
        rec = Recorder(stack)
        async with stack.call() as call:
            sid = await stack.session_id(call)
            (ended,) = await rec.wait_type("session.ended", sid=sid, within_s=30)
            await call.wait_closed(within_s=10)
    envs = rec.session(sid)
    (err,) = of_type(envs, "session.error")
    assert (err.event.code, err.event.stage) == ("app_unreachable", "app")
    assert "503" in err.event.message
    assert " ".join(spoken(envs)) == GOODBYE  # no greeting: an apology, then the hangup
    assert call.agent_spoke
    assert ended.event.reason == "app_unreachable"
    # Hung up through Plivo's REST API, not left in silence.
    assert stack.rest.calls_to("DELETE", f"/Call/{call.call_uuid}/")


async def test_app_that_dies_is_reopened_once_then_the_call_ends_politely(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async def on_message(conn: AppConn, msg: dict[str, Any]) -> None:
        if msg["type"] == "session.started":
            await conn.ws.close(1011, "app crashed")

    async with call_stack(settings_factory, monkeypatch) as stack, RawApp(on_message) as app:
        await stack.add_agent(**app_agent(app))
        rec = Recorder(stack)
        async with stack.call() as call:
            sid = await stack.session_id(call)
            await app.wait_connections(2)
            second = await app.wait_message("session.started", conn=1)
            assert second[0]["resumed"] is True
            await app.stop()  # the second socket drops too, and nobody answers a third time
            (ended,) = await rec.wait_type("session.ended", sid=sid, within_s=30)
            await call.wait_closed(within_s=10)
    envs = rec.session(sid)
    assert ended.event.reason == "app_lost"
    (err,) = of_type(envs, "session.error")
    assert (err.event.code, err.event.stage) == ("app_lost", "app")
    assert " ".join(spoken(envs)).endswith(GOODBYE)
    assert len(app.conns) == 2


async def test_junk_from_the_app_is_refused_and_the_call_goes_on(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    junk: list[str | dict[str, Any]] = [
        "not json at all", "[1, 2]", {"no": "type"}, {"type": "bogus.thing"},
        {"type": "agent_session.speak"}, {"type": "agent_session.send_dtmf", "digits": "x!"},
        {"type": "tool.result", "id": "nobody", "result": 1},
        {"type": "text", "token": "hi"}, {"event": "playAudio", "media": {"payload": "%%"}},
    ]

    async def on_message(conn: AppConn, msg: dict[str, Any]) -> None:
        if msg["type"] == "session.started":
            for j in junk:
                await conn.send(j)
            await conn.send({"type": "agent_session.speak", "text": "Still here."})

    async with call_stack(settings_factory, monkeypatch) as stack, RawApp(on_message) as app:
        await stack.add_agent(greeting=None, **app_agent(app))
        rec = Recorder(stack)
        async with stack.call() as call:
            sid = await stack.session_id(call)
            errors = await app.wait_message("error", n=len(junk))
            await rec.wait_type("agent.speech_completed", sid=sid, within_s=20)
    codes = [e["code"] for e in errors]
    assert codes == ["invalid_message", "invalid_message", "invalid_message", "unknown_type",
                     "invalid_message", "invalid_message", "not_waiting", "not_supported",
                     "invalid_message"]
    assert "text" in errors[4]["message"]  # names the missing field
    assert spoken(rec.session(sid)) == ["Still here."]
    assert not of_type(rec.session(sid), "session.error")


async def test_slow_tool_with_extend_wait_and_an_answer_after_the_call(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    late: list[dict[str, Any]] = []

    async def on_message(conn: AppConn, msg: dict[str, Any]) -> None:
        if msg["type"] == "tool.called" and msg.get("respond"):
            await conn.send({"type": "agent_session.extend_wait", "seconds": 3})
            await asyncio.sleep(1.5)  # past tool_timeout_s, inside the extension
            await conn.send({"type": "tool.result", "id": msg["id"], "result": {"ok": True}})
        elif msg["type"] == "session.ended":
            late.append(msg)
            await conn.send({"type": "tool.result", "id": "call_1", "result": "too late"})

    async with call_stack(settings_factory, monkeypatch) as stack, RawApp(on_message) as app:
        await stack.add_agent(tools=[ORDER_TOOL], websocket_settings={"tool_timeout_s": 1.0},
                              tool_settings={"hold_after_ms": 5000}, **app_agent(app))
        rec = Recorder(stack)
        script_order_lookup(stack, "Found it.")
        async with stack.call() as call:
            sid = await greet_and_ask(stack, call, rec, "Where is my order A123?")
            await rec.wait_type("turn.completed", sid=sid, within_s=30)
        await app.wait_message("session.ended")
        await asyncio.sleep(0.5)  # the late answer reaches a closed call: nothing breaks
        (ended,) = await rec.wait_type("session.ended", sid=sid)
    envs = rec.session(sid)
    (done,) = of_type(envs, "tool.completed")
    assert done.event.result == {"ok": True} and done.event.latency_ms >= 1400
    assert late and ended.event.reason in ("caller_hangup", "stream_closed")
    assert not of_type(envs, "session.error")


# -- the customer helper (app.voiceapp) and its examples, against the real server -------------
def example(name: str) -> Any:
    from tests.voiceapp.test_examples import load

    return load(name)


async def test_example_text_app_answers_through_the_helper(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack:
        voice = example("text_llm").build_app(stack.signing_secret)
        async with voice.serve("127.0.0.1", 0) as server:
            await stack.add_agent(mode="text", websocket_url=server.url("/voice"))
            rec = Recorder(stack)
            stack.deepgram.queue_transcript("How much does it cost?")
            async with stack.call() as call:
                sid = await greet_and_ask(stack, call, rec, "How much does it cost?")
                await rec.wait_type("turn.completed", sid=sid, within_s=30)
    (turn,) = of_type(rec.session(sid), "turn.completed")
    assert turn.event.agent_text == "The basic plan is ten dollars a month."
    assert not of_type(rec.session(sid), "session.error")


async def test_helper_refuses_a_server_with_another_secret(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """The helper checks Phonebooth's signature: an app configured with another server's
    secret refuses the call's socket, and the caller hears the apology."""
    async with call_stack(settings_factory, monkeypatch) as stack:
        voice = example("text_llm").build_app("whsec_" + "0" * 64)
        async with voice.serve("127.0.0.1", 0) as server:
            await stack.add_agent(mode="text", websocket_url=server.url("/voice"),
                                  failure_goodbye=GOODBYE,
                                  websocket_settings={"connect_attempts": 1})
            rec = Recorder(stack)
            async with stack.call() as call:
                sid = await stack.session_id(call)
                (ended,) = await rec.wait_type("session.ended", sid=sid, within_s=30)
    (err,) = of_type(rec.session(sid), "session.error")
    assert "401" in err.event.message
    assert ended.event.reason == "app_unreachable"


async def test_example_managed_app_runs_its_tool(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    tool = {"name": "order_status", "description": "Status of an order", "websocket": True,
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}},
                           "required": ["order_id"]}}
    async with call_stack(settings_factory, monkeypatch) as stack:
        voice = example("managed_tools").build_app(stack.signing_secret)
        async with voice.serve("127.0.0.1", 0) as server:
            await stack.add_agent(websocket_url=server.url("/"), tools=[tool])
            rec = Recorder(stack)
            stack.deepgram.queue_transcript("Where is order 1001?")
            stack.openai.queue_chat(
                ChatReply(tool_calls=[FakeToolCall("order_status", {"order_id": "1001"}, "c1")]),
                "It ships Thursday.")
            async with stack.call() as call:
                sid = await greet_and_ask(stack, call, rec, "Where is order 1001?")
                await rec.wait_type("turn.completed", sid=sid, within_s=30)
    (done,) = of_type(rec.session(sid), "tool.completed")
    assert done.event.result["status"] == "shipped"
    assert tool_results(chat_messages(stack, 1))[0]["eta"] == "Thursday"


async def test_example_audio_echo_plays_the_caller_back(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack:
        voice = example("audio_echo").build_app(stack.signing_secret, delay_s=0.2)
        async with voice.serve("127.0.0.1", 0) as server:
            await stack.add_agent(mode="audio", websocket_url=server.url("/"), greeting=None)
            async with stack.call() as call:
                await stack.say(call, "Testing one two three.")
                await call.wait_for(lambda: call.agent_spoke, within_s=10)
                await asyncio.sleep(1.0)
    assert call.result.play_frames > 25  # the caller heard their own words back
    assert not call.result.play_errors


def tone_wav(seconds: float = 0.6, rate: int = 16000) -> bytes:
    import io
    import wave

    t = np.arange(int(seconds * rate)) / rate
    samples = (np.sin(2 * np.pi * 330 * t) * 6000).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return buf.getvalue()


async def test_app_controls_the_call_through_the_helper(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every control command of a managed-mode app, sent with the helper's Session methods:
    background audio, DTMF, speak, play, inject and a handoff (a new prompt and tools) that the
    next answer uses, then hangup."""
    from app.voiceapp import Event, Session, VoiceApp

    billing_tool = {**ORDER_TOOL, "name": "refund", "description": "Refund an order"}
    voice = VoiceApp()

    @voice.on("session.started")
    def started(session: Session, event: Event) -> None:
        session.play_background("hold_music", volume=0.2)
        session.send_dtmf("12")
        session.speak("Welcome from the app.")
        session.play(tone_wav())
        session.inject("The caller is a gold member.")
        session.handoff(system_prompt="You are the billing agent.", tools=[billing_tool],
                        new_agent="billing")

    @voice.on("turn.completed")
    def done(session: Session, event: Event) -> None:
        session.stop_background()
        session.hangup()

    async with call_stack(settings_factory, monkeypatch) as stack:
        voice.signing_secret = stack.signing_secret
        async with voice.serve("127.0.0.1", 0) as server:
            await stack.add_agent(websocket_url=server.url("/"), greeting=None)
            rec = Recorder(stack)
            stack.deepgram.queue_transcript("I want a refund.")
            stack.openai.queue_chat("Let me help with that refund.")
            async with stack.call() as call:
                sid = await stack.session_id(call)
                await rec.wait_type("play.completed", sid=sid, within_s=20)
                await stack.say(call, "I want a refund.", trail_ms=200)
                (ended,) = await rec.wait_type("session.ended", sid=sid, within_s=30)
    envs = rec.session(sid)
    assert ended.event.reason == "agent_hangup"
    assert [e.event.digits for e in of_type(envs, "dtmf.sent")] == ["12"]
    (handoff,) = of_type(envs, "agent.handoff")
    assert handoff.event.new_agent == "billing"
    assert set(handoff.event.fields) >= {"prompt", "tools"}
    (played,) = of_type(envs, "play.completed")
    assert not played.event.interrupted
    sources = [e.event.source for e in of_type(envs, "agent.speech_created")]
    assert sources[:2] == ["say", "play"] and "reply" in sources
    # The next answer used the new persona, its tools and the injected context.
    request = stack.openai.for_endpoint("chat")[0].json
    assert request["messages"][0] == {"role": "system", "content": "You are the billing agent."}
    assert any(m["content"] == "The caller is a gold member." for m in request["messages"])
    assert [t["function"]["name"] for t in request["tools"]] == ["refund"]
    assert not of_type(envs, "session.error")


async def test_app_transfers_the_call(settings_factory: Callable[..., Settings],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    async def on_message(conn: AppConn, msg: dict[str, Any]) -> None:
        if msg["type"] == "session.started":
            await conn.send({"type": "agent_session.transfer", "destination": [], "mode": "warm"})
            await conn.send({"type": "agent_session.transfer", "destination": ["+1 415 555 0123",
                                                                               "+14155550124"]})

    async with call_stack(settings_factory, monkeypatch) as stack, RawApp(on_message) as app:
        await stack.add_agent(greeting=None, **app_agent(app))
        rec = Recorder(stack)
        async with stack.call() as call:
            sid = await stack.session_id(call)
            (ended,) = await rec.wait_type("session.ended", sid=sid, within_s=30)
    (moved,) = of_type(rec.session(sid), "call.transferred")
    assert moved.event.target == "+14155550123, +14155550124"
    assert ended.event.reason == "transferred"
    # Both destinations ring at once (the app's default dial mode is parallel).
    doc = stack.transfer_docs[call.call_uuid]
    assert "<Number>14155550123</Number>" in doc and "<Number>14155550124</Number>" in doc
    (refused,) = app.conns[0].of_type("error")
    assert refused["code"] == "invalid_message" and "destination" in refused["message"]


async def test_app_that_drops_once_is_reopened_and_the_call_goes_on(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async def on_message(conn: AppConn, msg: dict[str, Any]) -> None:
        if msg["type"] == "session.started" and not msg["resumed"]:
            await conn.ws.close(1012, "app restarting")
        elif msg["type"] == "tool.called" and msg.get("respond"):
            await conn.send({"type": "tool.result", "id": msg["id"], "result": {"ok": 1}})

    async with call_stack(settings_factory, monkeypatch) as stack, RawApp(on_message) as app:
        await stack.add_agent(tools=[ORDER_TOOL], **app_agent(app))
        rec = Recorder(stack)
        script_order_lookup(stack, "Found it.")
        async with stack.call() as call:
            await app.wait_message("session.started", conn=1)
            sid = await greet_and_ask(stack, call, rec, "Where is my order A123?")
            await rec.wait_type("turn.completed", sid=sid, within_s=30)
    # The second socket carried the rest of the call: the tool was answered on it.
    assert len(app.conns) == 2
    assert app.conns[1].of_type("tool.called") and app.conns[1].headers[SESSION_ID_HEADER] == sid
    assert of_type(rec.session(sid), "tool.completed")
    assert not of_type(rec.session(sid), "session.error")


async def test_audio_mode_app_speaks_and_plays_with_the_agents_voice(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async def on_message(conn: AppConn, msg: dict[str, Any]) -> None:
        if msg.get("event") == "start":
            await conn.send({"type": "agent_session.speak", "text": "Hello from the app."})
            await conn.send({"type": "agent_session.play",
                             "audio_data": base64.b64encode(tone_wav()).decode()})
        elif msg.get("type") == "play.completed":
            await conn.send({"type": "agent_session.inject", "content": "no LLM here"})
            await conn.send({"type": "agent_session.hangup"})

    async with call_stack(settings_factory, monkeypatch) as stack, RawApp(on_message) as app:
        await stack.add_agent(mode="audio", **app_agent(app))
        rec = Recorder(stack)
        async with stack.call() as call:
            sid = await stack.session_id(call)
            (ended,) = await rec.wait_type("session.ended", sid=sid, within_s=30)
    assert ended.event.reason == "agent_hangup"
    (played,) = of_type(rec.session(sid), "play.completed")
    assert not played.event.interrupted
    assert call.result.play_frames > 50  # the sentence and the tone reached the caller
    (refused,) = app.conns[0].of_type("error")
    assert refused["code"] == "not_supported"


async def test_audio_mode_recording_consent_is_heard_before_the_apps_audio(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack, RawApp() as app:
        await stack.add_agent(mode="audio", recording={
            "enabled": True, "consent_message": "This call is recorded."}, **app_agent(app))
        async with stack.call() as call:
            # The app sends nothing: what the caller hears is the notice, in the agent's voice.
            await call.wait_for(lambda: call.result.play_frames > 20, within_s=15)
            await app.wait_message("start")
    assert not call.result.play_errors
