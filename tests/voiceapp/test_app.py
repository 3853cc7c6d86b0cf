"""VoiceApp over a real socket: handlers, the signature check, each Session command's JSON."""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from app.voiceapp import Event, Session, VoiceApp
from tests.voiceapp.conftest import (
    SECRET,
    phonebooth,
    recv,
    recv_n,
    send,
    serving,
    started,
)


async def test_sync_and_async_handlers_get_session_and_event() -> None:
    app = VoiceApp(SECRET)
    seen: list[tuple[str, str, str, bool]] = []

    @app.on("tool.called")
    def sync_tool(session: Session, event: Event) -> None:
        seen.append(("sync", event.type, event["name"], threading.current_thread()
                     is not threading.main_thread()))
        session.send_tool_result(event["id"], {"n": event.arguments["n"] + 1})

    @app.on("tool.called")
    async def async_tool(session: Session, event: Event) -> None:
        seen.append(("async", event.type, event.get("name"), False))

    async with serving(app) as server, phonebooth(server) as ws:
        await send(ws, started())
        await send(ws, {"type": "tool.called", "agent_session_id": "sess_1", "id": "tc_1",
                        "name": "add", "arguments": {"n": 1}, "respond": True})
        assert await recv(ws) == {"type": "tool.result", "id": "tc_1", "result": {"n": 2}}
    assert sorted(seen) == [("async", "tool.called", "add", False),
                            ("sync", "tool.called", "add", True)]


async def test_catch_all_connect_disconnect_and_session_fields() -> None:
    app = VoiceApp(SECRET)
    log: list[Any] = []
    done = asyncio.Event()

    @app.on_connect
    def connected(session: Session) -> None:
        log.append(("connect", session.agent_session_id))
        session.data["n"] = 0

    @app.on_event
    async def every(session: Session, event: Event) -> None:
        session.data["n"] += 1
        log.append(("event", event.type))

    @app.on_disconnect
    async def disconnected(session: Session) -> None:
        log.append(("disconnect", session.data["n"], session.call_id, session.stream_id,
                    session.mode))
        done.set()

    async with serving(app) as server:
        async with phonebooth(server, session_id="sess_9") as ws:
            await send(ws, started("sess_9", mode="audio"))
            await send(ws, {"event": "start", "start": {
                "streamId": "st_1", "callId": "call-uuid-1",
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}}})
            await send(ws, {"event": "stop"})
        await asyncio.wait_for(done.wait(), 5)
    assert log[0] == ("connect", "sess_9")
    assert sorted(log[1:4]) == [("event", "session.started"), ("event", "start"),
                                ("event", "stop")]
    assert log[4] == ("disconnect", 3, "call-uuid-1", "st_1", "audio")


def test_event_is_a_read_only_mapping() -> None:
    event = Event({"type": "tool.called", "id": "x", "arguments": {"a": 1}})
    assert event.type == "tool.called" and event.id == "x" and event["arguments"] == {"a": 1}
    assert dict(event) == {"type": "tool.called", "id": "x", "arguments": {"a": 1}}
    assert event.get("missing", 3) == 3 and "id" in event and len(event) == 3
    assert Event({"event": "media", "media": {}}).type == "media"
    with pytest.raises(AttributeError):
        event.missing  # noqa: B018
    with pytest.raises(AttributeError):
        event.id = "y"  # type: ignore[misc]
    with pytest.raises(TypeError):
        event["id"] = "y"  # type: ignore[index]
    copy = event.to_dict()
    copy["arguments"]["a"] = 2
    assert event["arguments"] == {"a": 1}


async def _refused(app: VoiceApp, **kw: Any) -> int:
    async with serving(app) as server:
        with pytest.raises(InvalidStatus) as info:
            async with phonebooth(server, **kw):
                pass
    return info.value.response.status_code


async def test_wrong_stale_or_missing_signature_is_refused_with_401() -> None:
    called: list[str] = []
    app = VoiceApp(SECRET)
    app.on_connect(lambda session: called.append("connect"))
    assert await _refused(app, secret="whsec_wrong") == 401
    assert await _refused(app, timestamp=int(time.time()) - 301) == 401
    assert await _refused(app, secret=None) == 401
    assert await _refused(app, signed_url="ws://127.0.0.1:1/elsewhere") == 401
    assert called == []


async def test_right_signature_is_accepted_even_for_another_host() -> None:
    app = VoiceApp(SECRET)

    @app.on("ping")
    def ping(session: Session, event: Event) -> None:
        session.send_raw({"type": "pong", "session": session.agent_session_id})

    async with serving(app) as server:
        # behind a proxy: Phonebooth signed the public URL, with the same path and query
        async with phonebooth(server, "/voice?team=a", session_id="s_2",
                              signed_url="wss://public.example.com/voice?team=a") as ws:
            await send(ws, {"type": "ping"})
            assert await recv(ws) == {"type": "pong", "session": "s_2"}


async def test_without_a_secret_every_connection_is_accepted() -> None:
    app = VoiceApp()
    app.on("ping")(lambda s, e: s.send_raw({"type": "pong"}))
    async with serving(app) as server, phonebooth(server, secret=None) as ws:
        await send(ws, {"type": "ping"})
        assert await recv(ws) == {"type": "pong"}


async def test_every_session_command(tmp_path: Path) -> None:
    wav = b"RIFF\x24\x00\x00\x00WAVEfmt "
    (tmp_path / "hello.wav").write_bytes(wav)
    b64 = base64.b64encode(wav).decode()
    app = VoiceApp(SECRET)

    @app.on("go")
    def go(s: Session, event: Event) -> None:
        s.send_tool_result("t1", {"ok": True})
        s.send_tool_error("t2", "no such order")
        s.send_text("Hel")                         # the latest llm.request's id
        s.send_text("lo", last=True, request_id="r_0")
        s.extend_wait()
        s.extend_wait(10)
        s.send_raw({"type": "custom", "x": [1]})
        s.send_media("AAAA")
        s.send_media(b"\x00\x01", content_type="audio/x-l16", sample_rate=16000)
        s.send_checkpoint("cp1")
        s.clear_audio()
        s.update(system_prompt="Be brief.")
        s.update(tools=[], llm={"provider": "openai", "model": "gpt-4o-mini"})
        s.inject("The caller is a gold member.")
        s.speak("One moment.")
        s.speak("Listen.", allow_interruption=False)
        s.play(tmp_path / "hello.wav")
        s.play(wav, allow_interruption=False)
        s.transfer("+15550001111")
        s.transfer(["+1555000", "+1555001"], dial_mode="sequential", timeout=15)
        s.send_dtmf("123#")
        s.hangup()
        s.play_background("office")
        s.play_background(wav, volume=0.2, loop=False)
        s.stop_background()

    expected: list[dict[str, Any]] = [
        {"type": "tool.result", "id": "t1", "result": {"ok": True}},
        {"type": "tool.error", "id": "t2", "error": "no such order"},
        {"type": "text", "token": "Hel", "last": False, "request_id": "r_1"},
        {"type": "text", "token": "lo", "last": True, "request_id": "r_0"},
        {"type": "agent_session.extend_wait"},
        {"type": "agent_session.extend_wait", "seconds": 10},
        {"type": "custom", "x": [1]},
        {"event": "playAudio", "media": {"contentType": "audio/x-mulaw", "sampleRate": 8000,
                                         "payload": "AAAA"}},
        {"event": "playAudio", "media": {"contentType": "audio/x-l16", "sampleRate": 16000,
                                         "payload": "AAE="}},
        {"event": "checkpoint", "name": "cp1"},
        {"event": "clearAudio"},
        {"type": "agent_session.update", "system_prompt": "Be brief."},
        {"type": "agent_session.update", "tools": [],
         "llm": {"provider": "openai", "model": "gpt-4o-mini"}},
        {"type": "agent_session.inject", "content": "The caller is a gold member."},
        {"type": "agent_session.speak", "text": "One moment.", "allow_interruption": True},
        {"type": "agent_session.speak", "text": "Listen.", "allow_interruption": False},
        {"type": "agent_session.play", "audio_data": b64, "allow_interruption": True},
        {"type": "agent_session.play", "audio_data": b64, "allow_interruption": False},
        {"type": "agent_session.transfer", "destination": "+15550001111",
         "dial_mode": "parallel", "timeout": 30},
        {"type": "agent_session.transfer", "destination": ["+1555000", "+1555001"],
         "dial_mode": "sequential", "timeout": 15},
        {"type": "agent_session.send_dtmf", "digits": "123#"},
        {"type": "agent_session.hangup"},
        {"type": "audio.mix", "sound": "office", "volume": 0.5, "loop": True},
        {"type": "audio.mix", "sound": b64, "volume": 0.2, "loop": False},
        {"type": "audio.mix_enable", "enabled": False},
    ]
    async with serving(app) as server, phonebooth(server) as ws:
        await send(ws, {"type": "llm.request", "request_id": "r_1", "turn_id": "t",
                        "messages": [], "tools": []})
        await send(ws, {"type": "go"})
        assert await recv_n(ws, len(expected)) == expected


async def test_send_text_without_any_request_omits_the_id() -> None:
    app = VoiceApp(SECRET)
    app.on("go")(lambda s, e: s.send_text("hi"))
    async with serving(app) as server, phonebooth(server) as ws:
        await send(ws, {"type": "go"})
        assert await recv(ws) == {"type": "text", "token": "hi", "last": False}


async def test_cancelled_tracks_llm_cancelled() -> None:
    app = VoiceApp(SECRET)
    states: list[bool] = []
    go_on = asyncio.Event()

    @app.on("llm.request")
    async def answer(session: Session, event: Event) -> None:
        states.append(session.cancelled())
        session.send_raw({"type": "streaming"})
        await go_on.wait()
        states.append(session.cancelled(event["request_id"]))
        session.send_raw({"type": "checked"})

    @app.on("llm.cancelled")
    async def cancelled(session: Session, event: Event) -> None:
        go_on.set()

    async with serving(app) as server, phonebooth(server) as ws:
        await send(ws, {"type": "llm.request", "request_id": "r_1", "messages": []})
        assert await recv(ws) == {"type": "streaming"}
        await send(ws, {"type": "llm.cancelled", "request_id": "r_1", "reason": "interrupted"})
        assert await recv(ws) == {"type": "checked"}
    assert states == [False, True]


async def test_a_failing_handler_does_not_kill_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = VoiceApp(SECRET)

    @app.on("boom")
    def boom(session: Session, event: Event) -> None:
        raise RuntimeError("sync handler broke")

    @app.on("boom_async")
    async def boom_async(session: Session, event: Event) -> None:
        raise ValueError("async handler broke")

    @app.on("ping")
    async def ping(session: Session, event: Event) -> None:
        session.send_raw({"type": "pong"})

    @app.on("not_json_safe")
    def not_json_safe(session: Session, event: Event) -> None:
        session.send_raw({"type": "x", "v": object()})

    with caplog.at_level(logging.ERROR, logger="app.voiceapp"):
        async with serving(app) as server, phonebooth(server) as ws:
            for kind in ("boom", "boom_async", "not_json_safe"):
                await send(ws, {"type": kind})
            await ws.send("not json")
            await ws.send("[1, 2]")
            await send(ws, {"type": "ping"})
            assert await recv(ws) == {"type": "pong"}
    text = caplog.text
    assert "sync handler broke" in text and "async handler broke" in text
    assert "not JSON serializable" in text


async def test_sends_after_the_connection_closed_do_not_raise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = VoiceApp(SECRET)
    results: list[str] = []
    closed = asyncio.Event()

    @app.on("later")
    async def later(session: Session, event: Event) -> None:
        await closed.wait()
        session.speak("too late")
        await asyncio.to_thread(session.hangup)  # from a thread, too
        results.append("async ok")

    @app.on("later_sync")
    def later_sync(session: Session, event: Event) -> None:
        while not session.closed:
            time.sleep(0.01)
        session.send_tool_result("t", 1)
        results.append("sync ok")

    @app.on_disconnect
    def gone(session: Session) -> None:
        session.hangup()
        results.append("disconnect ok")

    with caplog.at_level(logging.WARNING, logger="app.voiceapp"):
        async with serving(app) as server:
            async with phonebooth(server) as ws:
                await send(ws, {"type": "later"})
                await send(ws, {"type": "later_sync"})
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.05)
            closed.set()
            for _ in range(200):
                if len(results) == 3:
                    break
                await asyncio.sleep(0.02)
    assert sorted(results) == ["async ok", "disconnect ok", "sync ok"]
    assert "dropped" in caplog.text


async def test_handle_runs_under_a_starlette_route() -> None:
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocket

    from app.events.signing import sign_connection

    app = VoiceApp(SECRET)
    app.on("ping")(lambda s, e: s.send_raw({"type": "pong", "id": s.agent_session_id}))

    async def route(ws: WebSocket) -> None:
        await app.handle(ws)

    web = Starlette(routes=[WebSocketRoute("/voice", route)])

    def run() -> None:
        with TestClient(web) as client:
            headers = sign_connection(SECRET, "s_3", "wss://public.example.com/voice?a=1")
            with client.websocket_connect("/voice?a=1", headers=headers) as ws:
                ws.send_json({"type": "ping"})
                assert ws.receive_json() == {"type": "pong", "id": "s_3"}
            from starlette.testclient import WebSocketDenialResponse

            bad = sign_connection("whsec_wrong", "s_3", "wss://public.example.com/voice?a=1")
            with pytest.raises(WebSocketDenialResponse) as info:
                with client.websocket_connect("/voice?a=1", headers=bad):
                    pass
            assert info.value.status_code == 401

    await asyncio.to_thread(run)
