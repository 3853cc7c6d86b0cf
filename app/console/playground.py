"""`WS /v1/playground`: talk to an agent from the browser, through the same call host as a phone.

1. The browser connects and sends `{"event": "hello", "api_key": "...", "agent_id": "..."}`
   (the key goes in a message, not the URL, so it never lands in an access log). A missing or
   bad key closes with 1008, an unknown agent with 4404, a full or draining server with 1013.
2. The server creates a session row like an answered inbound call (direction `inbound`,
   from `browser`, metadata `{"playground": true}`) pinned to the agent's current version, takes
   a call slot, and answers `{"event": "session", "session_id", "agent_id", "agent_version",
   "sample_rate": 16000}`.
3. Audio flows as described in app.console.browser_transport; the call's events are forwarded
   as `{"event": "phonebooth", "envelope": {id, type, session_id, seq, ts, data}}` (the same
   shape as WS /v1/sessions/{id}/events), so the page can draw the transcript and latency.
4. When the call ends (the caller sends `stop` or closes, the agent hangs up, the API ends it),
   the session is closed in the database, `{"event": "ended", "reason"}` is sent and the socket
   closes with 1000.

Bad input never ends the call: malformed messages are counted, logged (rate-limited) and
skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketState

from app import metrics
from app.api.auth import authenticate
from app.calls.runner import CallInfo
from app.console.browser_transport import BROWSER_CODEC, BrowserTransport
from app.db.models import new_id, utcnow
from app.db.repos import agents as agents_repo
from app.db.repos import sessions as sessions_repo
from app.events.bus import Envelope, EventBus, SubscriptionClosed
from app.events.sql_sink import end_status
from app.state import AppState
from app.telephony.plivo import protocol as proto
from app.telephony.plivo.edge import get_edge
from app.telephony.plivo.playout import PlivoPlayout

log = logging.getLogger(__name__)

router = APIRouter(tags=["console"])

HELLO_TIMEOUT_S = 10.0
RUNNER_EXIT_GRACE_S = 10.0
EVENTS_FLUSH_S = 2.0  # after the call, how long the last events get to reach the browser
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013
CLOSE_NOT_FOUND = 4404
MAX_AUDIO_BYTES = 64 * 1024  # one binary message: 2 s of 16 kHz PCM16 is plenty


class _Socket:
    """Serialises sends: playout frames, events and control replies share one socket."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self._lock = asyncio.Lock()

    async def send(self, message: dict[str, Any] | str) -> None:
        text = message if isinstance(message, str) else json.dumps(
            message, separators=(",", ":"), ensure_ascii=False, default=str)
        async with self._lock:
            await self.ws.send_text(text)

    async def close(self, code: int, reason: str = "") -> None:
        if self.ws.application_state == WebSocketState.CONNECTED and \
                self.ws.client_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.ws.close(code=code, reason=reason[:120])


class _SkipLog:
    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.count = 0

    def __call__(self, why: str) -> None:
        self.count += 1
        if self.count <= 10 or self.count % 100 == 0:
            log.warning("playground %s: skipped message #%d: %s", self.session_id, self.count,
                        why)


async def _hello(ws: WebSocket) -> dict[str, Any] | None:
    msg = await ws.receive()
    if msg["type"] == "websocket.disconnect" or msg.get("text") is None:
        return None
    try:
        data = json.loads(msg["text"])
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("event") != "hello":
        return None
    return data


@router.websocket("/v1/playground")
async def playground(ws: WebSocket) -> None:
    await ws.accept()
    sock = _Socket(ws)
    state: AppState = ws.app.state.pb
    try:
        hello = await asyncio.wait_for(_hello(ws), HELLO_TIMEOUT_S)
    except TimeoutError:
        hello = None
    if hello is None:
        await sock.close(CLOSE_POLICY, "expected a hello message first")
        return
    try:
        principal = await authenticate(state, str(hello.get("api_key") or ""))
    except Exception:
        log.exception("playground authentication failed")
        principal = None
    if principal is None:
        await sock.close(CLOSE_POLICY, "invalid or missing API key")
        return
    agent_id = str(hello.get("agent_id") or "")
    async with state.db.sessionmaker() as s:
        agent = await agents_repo.get(s, agent_id) if agent_id else None
        version = await agents_repo.current_version(s, agent) if agent is not None else None
    if agent is None or version is None:
        await sock.close(CLOSE_NOT_FOUND, f"agent '{agent_id[:40]}' not found")
        return
    edge = get_edge(state)
    session_id = new_id()
    call_uuid = f"browser-{uuid.uuid4()}"
    if state.draining or not await edge.admission.admit(session_id):
        await sock.close(CLOSE_TRY_AGAIN, "at capacity or draining")
        return
    try:
        async with state.db.transaction() as s:
            await sessions_repo.create(
                s, id=session_id, agent_id=agent.id, agent_version=version.version,
                call_uuid=call_uuid, stream_id=call_uuid, direction="inbound",
                from_number="browser", to_number="playground", status="active",
                answered_at=utcnow(), metadata_={"playground": True})
        info = CallInfo(
            session_id=session_id, agent_id=agent.id, agent_version=version.version,
            agent_config=dict(version.config), direction="inbound", from_number="browser",
            to_number="playground", call_uuid=call_uuid, stream_id=call_uuid,
            metadata={"playground": True},
        )
        await _run(sock, state, info)
    finally:
        edge.admission.release(session_id)


async def _run(sock: _Socket, state: AppState, info: CallInfo) -> None:
    session_id = info.session_id
    ended = asyncio.Event()

    async def close_call(reason: str) -> None:
        # The agent or the API ends the call: its frames end, the host stops the engine.
        transport.finish(reason)
        with contextlib.suppress(Exception):
            await sock.send({"event": "hangup", "reason": reason})

    playout = PlivoPlayout(sock.send, BROWSER_CODEC, info.stream_id,
                           max_ahead_ms=state.settings.playout.max_ahead_ms)
    transport = BrowserTransport(session_id=session_id, call_uuid=info.call_uuid,
                                 playout=playout, close=close_call)
    edge = get_edge(state)
    edge.admission.attach(session_id, transport.hangup)
    bus: EventBus | None = state.events.bus if state.events is not None else None
    sub = bus.subscribe(session_id, since_seq=0) if bus is not None else None
    skip = _SkipLog(session_id)
    status, reason = "failed", "runner_error"
    await sock.send({"event": "session", "session_id": session_id, "agent_id": info.agent_id,
                     "agent_version": info.agent_version,
                     "sample_rate": BROWSER_CODEC.sample_rate})
    log.info("playground session %s started for agent %s v%s", session_id, info.agent_id,
             info.agent_version)
    reader = asyncio.create_task(_read(sock.ws, transport, playout, skip),
                                 name=f"playground-reader-{session_id}")
    forward = asyncio.create_task(_forward(sock, sub, ended),
                                  name=f"playground-events-{session_id}")
    running: asyncio.Task[str] | None = None
    try:
        if state.calls is None:
            raise RuntimeError("no call runner is installed (the call host is not running)")
        running = asyncio.create_task(state.calls.run(info, transport),
                                      name=f"playground-call-{session_id}")
        await asyncio.wait({reader, running}, return_when=asyncio.FIRST_COMPLETED)
        if reader.done():
            transport.finish(_result(reader, "caller_hangup"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(running), RUNNER_EXIT_GRACE_S)
        if running.done() and not running.cancelled() and running.exception() is None:
            reason = running.result() or transport.end_reason or "ended"
            status = end_status(reason)
        elif running.done() and not running.cancelled():
            log.error("playground %s: call runner failed: %r", session_id, running.exception())
        else:
            reason = transport.end_reason or "caller_hangup"
            status = "ended"
        transport.finish(reason)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), EVENTS_FLUSH_S)
    except Exception as exc:
        log.error("playground %s: %r", session_id, exc)
        with contextlib.suppress(Exception):
            await sock.send({"event": "error", "message": str(exc)[:300]})
    finally:
        await playout.close()
        for task in (reader, forward, running):
            if task is not None and not task.done():
                task.cancel()
        for task in (reader, forward, running):
            if task is not None:
                with contextlib.suppress(BaseException):
                    await task
        if sub is not None:
            sub.close("call over")
        try:
            async with state.db.transaction() as s:
                await sessions_repo.end(s, session_id, status=status, end_reason=reason[:64])
        except Exception:
            log.exception("playground %s: could not record the end of the call", session_id)
        metrics.PLAYOUT_UNDERRUNS.inc(playout.stats.underruns)
        metrics.INBOUND_FRAMES_DROPPED.inc(transport.inbox.dropped)
        with contextlib.suppress(Exception):
            await sock.send({"event": "ended", "reason": reason})
        await sock.close(CLOSE_NORMAL, "call ended")
        log.info("playground session %s ended (%s, %s); %d frames in, %d skipped messages",
                 session_id, status, reason, transport.inbox.frames_in, skip.count)


def _result(task: asyncio.Task[str], default: str) -> str:
    if task.done() and not task.cancelled() and task.exception() is None:
        return task.result()
    return default


async def _forward(sock: _Socket, sub: Any, ended: asyncio.Event) -> None:
    """The call's events to the browser, until session.ended."""
    if sub is None:
        return
    try:
        while True:
            env: Envelope = await sub.get()
            await sock.send({"event": "phonebooth", "envelope": env.to_dict()})
            if env.type == "session.ended":
                ended.set()
                return
    except SubscriptionClosed:
        return


async def _read(ws: WebSocket, transport: BrowserTransport, playout: PlivoPlayout,
                skip: _SkipLog) -> str:
    """Route the browser's messages until it hangs up; returns why the call ended."""
    while True:
        try:
            msg = await ws.receive()
        except RuntimeError:  # our side closed the socket
            return "caller_hangup"
        if msg["type"] == "websocket.disconnect":
            return "caller_hangup"
        data = msg.get("bytes")
        if data is not None:
            if len(data) > MAX_AUDIO_BYTES:
                skip(f"audio message of {len(data)} bytes")
                transport.stats.messages_skipped += 1
            else:
                transport.push_audio(data)
            continue
        try:
            parsed = proto.parse_message(msg.get("text") or "")
        except proto.ProtocolError as exc:
            skip(str(exc))
            transport.stats.messages_skipped += 1
            continue
        if isinstance(parsed, proto.PlayedStream):
            playout.on_played(parsed.name)
        elif isinstance(parsed, proto.ClearedAudio):
            playout.on_cleared()
        elif isinstance(parsed, proto.Dtmf):
            transport.push_dtmf(parsed.digit)
        elif isinstance(parsed, proto.Stop):
            return "caller_hangup"
        else:
            skip(f"unexpected {type(parsed).__name__}")
            transport.stats.messages_skipped += 1
