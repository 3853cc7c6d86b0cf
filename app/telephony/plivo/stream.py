"""`WS /plivo/stream/{session_id}`: one Plivo audio stream, start to end.

1. Authenticate: the `?token=` must be ours for this session and its CallUUID, and (when
   signatures are on) the upgrade must carry a valid V3 signature over the stream URL in its
   `http://` form. Failures close with 1008 and a log line saying why.
2. Wait for `start` and take the codec and streamId from it, not from the XML we served.
3. Decode `media` into 20 ms frames at the stream's own rate for the runner; route `dtmf`,
   `playedStream`/`played`, `clearedAudio`, `stop`, `playFailed`, `error` and unknown events.
4. Run the call: `app.state.pb.calls` (a `CallRunner`), or the echo runner for edge tests.
5. Record how it ended on the session and free the admission slot.

The session row fields and agent config come in-process from the answer URL (app.telephony.
plivo.offline) when this process answered the call, through the bus (app.bus) when another
process did, else the session row from the database (the call host reads the agent version); the
activation and end of the session are written through
the outbox, so a call survives the database going away mid-call.

Bad input never ends a call: malformed JSON, missing fields, oversized frames and media in the
wrong codec are logged (rate-limited) and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketState

from app import metrics
from app.bus.base import get_bus
from app.calls.runner import CallInfo, CallRunner
from app.calls.state_store import SessionStateStore
from app.calls.transport import CallTransport
from app.db.models import utcnow
from app.db.repos import sessions as sessions_repo
from app.events.sql_sink import end_status
from app.outbox.sessions import SESSION_ACTIVATE, SESSION_END, iso
from app.state import AppState
from app.telephony.plivo import protocol as proto
from app.telephony.plivo.codec import StreamCodec, UnsupportedCodec
from app.telephony.plivo.edge import PlivoEdge, get_edge
from app.telephony.plivo.playout import PlivoPlayout
from app.telephony.plivo.signature import verify_v3, websocket_signed_url
from app.telephony.plivo.token import InvalidToken, verify_stream_token
from app.telephony.plivo.transfers import PlivoTransfers
from app.telephony.plivo.transport import PlivoTransport

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0  # Plivo sends `start` right after connecting
RUNNER_EXIT_GRACE_S = 10.0  # after the stream ends, how long the runner gets to wrap up
FAR_END_CLOSE_GRACE_S = 5.0  # after the runner ends (e.g. REST hangup), wait for Plivo's close
END_RECORDS_WAIT_S = 5.0  # at most this long for a call's records before its slot is freed
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013


class _SkipLog:
    """Rate-limited logging of skipped messages: a flood of junk must not flood the log."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.count = 0

    def __call__(self, why: str) -> None:
        self.count += 1
        if self.count <= 10 or self.count % 100 == 0:
            log.warning("session %s: skipped stream message #%d: %s", self.session_id,
                        self.count, why)


async def _reject(ws: WebSocket, session_id: str, why: str) -> None:
    log.warning("stream for session %s rejected: %s", session_id, why)
    # Accept first so the refusal is a real close frame with a code, not a bare HTTP 403.
    if ws.client_state == WebSocketState.CONNECTING:
        await ws.accept()
    await ws.close(code=POLICY_VIOLATION, reason=why[:120])


def _upgrade_url(edge: PlivoEdge, ws: WebSocket) -> str:
    query = ws.url.query
    return websocket_signed_url(edge.public_url + ws.url.path + (f"?{query}" if query else ""))


async def _receive_text(ws: WebSocket) -> str | bytes | None:
    """The next data frame, or None once the socket is closed."""
    msg = await ws.receive()
    if msg["type"] == "websocket.disconnect":
        return None
    if msg.get("text") is not None:
        return msg["text"]
    if msg.get("bytes") is not None:
        return msg["bytes"]
    return ""


async def _await_start(ws: WebSocket, skip: _SkipLog) -> proto.Start | None:
    while True:
        raw = await _receive_text(ws)
        if raw is None:
            return None
        try:
            msg = proto.parse_message(raw)
        except proto.ProtocolError as exc:
            skip(str(exc))
            continue
        if isinstance(msg, proto.Start):
            return msg
        skip(f"'{type(msg).__name__}' before 'start'")


def _choose_codec(start: proto.Start, edge: PlivoEdge, session_id: str) -> StreamCodec:
    try:
        return StreamCodec(start.encoding, start.sample_rate)
    except UnsupportedCodec as exc:
        fallback = StreamCodec.parse(edge.settings.plivo.content_type)
        log.warning("session %s: start announces %s; using the configured %s instead",
                    session_id, exc, fallback.content_type)
        return fallback


async def _load_session(
    state: AppState, edge: PlivoEdge, session_id: str
) -> tuple[dict[str, Any], dict[str, Any] | None] | str | None:
    """(session fields, agent config or None) for the stream: both handed over in-process by
    the answer URL when this process answered the call, through the bus when another did, else
    the session read from the database (the call host loads its agent version). None = no such
    session; a string = why it could not be read."""
    answered = edge.answered.get(session_id)
    if answered is not None:
        return dict(answered.row), dict(answered.config)
    shared = await get_bus(state).shared_answer(session_id)
    if shared is not None:
        return dict(shared["row"]), dict(shared["config"])
    try:
        async with state.db.session() as s:
            row = await sessions_repo.get(s, session_id)
            if row is None:
                return None
            info_row: dict[str, Any] = {
                "agent_id": row.agent_id, "agent_version": row.agent_version,
                "direction": row.direction, "from_number": row.from_number,
                "to_number": row.to_number, "call_uuid": row.call_uuid or "",
                "status": row.status, "metadata": dict(row.metadata_ or {}),
            }
    except Exception as exc:
        if state.events is not None:
            state.events.outbox.report_db_error(exc)
        return f"database unavailable ({type(exc).__name__})"
    return info_row, None


async def _wait_for_records(state: AppState) -> None:
    """Let the call's records reach the database before its slot is released (so a drain that
    waits for calls also waits for their records) — unless the database is away: then they
    wait in the outbox, which a shutdown keeps on disk."""
    outbox = state.events.outbox if state.events is not None else None
    if outbox is not None and outbox.db_up:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(outbox.flush(), END_RECORDS_WAIT_S)


def _record(state: AppState, kind: str, session_id: str, body: dict[str, Any]) -> None:
    """A session write, in order behind the session's creation and its events (the outbox)."""
    if state.events is None:
        raise RuntimeError("no event service: the session record cannot be written")
    state.events.outbox.put(kind, session_id, body)


async def serve_stream(ws: WebSocket, session_id: str, state: AppState) -> None:
    edge = get_edge(state)
    loaded = await _load_session(state, edge, session_id)
    if isinstance(loaded, str):
        await _reject(ws, session_id, loaded)
        return
    if loaded is None or not loaded[0]["call_uuid"]:
        await _reject(ws, session_id, "unknown session")
        return
    info_row, config = loaded
    try:
        verify_stream_token(edge.token_key, ws.query_params.get("token"), session_id,
                            info_row["call_uuid"])
    except InvalidToken as exc:
        await _reject(ws, session_id, str(exc))
        return
    if state.settings.security.verify_plivo_signatures:
        check = verify_v3(ws.headers, "GET", _upgrade_url(edge, ws), None, edge.auth_tokens)
        if not check:
            await _reject(ws, session_id, f"upgrade signature: {check.reason}")
            return
    if info_row["status"] not in ("ringing", "active"):
        await _reject(ws, session_id, f"session is already {info_row['status']}")
        return

    await ws.accept()
    skip = _SkipLog(session_id)
    try:
        start = await asyncio.wait_for(_await_start(ws, skip), START_TIMEOUT_S)
    except TimeoutError:
        start = None
        log.warning("session %s: no 'start' within %.0f s", session_id, START_TIMEOUT_S)
    if start is None:
        with contextlib.suppress(Exception):
            await ws.close(code=POLICY_VIOLATION, reason="no start event")
        return
    if start.call_id != info_row["call_uuid"]:
        log.warning("session %s: start.callId %s differs from the answered CallUUID %s",
                    session_id, start.call_id, info_row["call_uuid"])
    codec = _choose_codec(start, edge, session_id)
    await _run_call(ws, state, edge, session_id, info_row, config, start, codec, skip)


async def _run_call(ws: WebSocket, state: AppState, edge: PlivoEdge, session_id: str,
                    row: dict[str, Any], config: dict[str, Any] | None, start: proto.Start,
                    codec: StreamCodec, skip: _SkipLog) -> None:
    call_uuid = row["call_uuid"]

    async def send(text: str) -> None:
        await ws.send_text(text)

    async def close_stream() -> None:
        with contextlib.suppress(Exception):
            await ws.close(code=1000)

    store = SessionStateStore(state.db.sessionmaker)

    transfers = None
    if edge.rest is not None:
        ours = row["to_number"] if row["direction"] == "inbound" else row["from_number"]
        transfers = PlivoTransfers(rest=edge.rest, store=store, public_url=edge.public_url,
                                   session_id=session_id, call_uuid=call_uuid,
                                   caller_id=ours or "")

    playout = PlivoPlayout(send, codec, start.stream_id,
                           max_ahead_ms=state.settings.playout.max_ahead_ms)
    transport = PlivoTransport(session_id=session_id, call_uuid=call_uuid,
                               stream_id=start.stream_id, codec=codec, playout=playout,
                               rest=edge.rest, transfers=transfers,
                               close_stream=close_stream)
    if not edge.admission.attach(session_id, transport.hangup):
        log.warning("session %s: stream refused, server is draining or full", session_id)
        await ws.close(code=TRY_AGAIN_LATER, reason="server unavailable")
        return
    status, reason = "ended", "stream_closed"
    try:
        # A reconnect (Plivo retries a dropped stream) keeps the first answer time.
        _record(state, SESSION_ACTIVATE, session_id, {
            "id": session_id, "stream_id": start.stream_id[:64],
            "answered_at": iso(utcnow()) if row["status"] == "ringing" else None,
            "node_id": sessions_repo.current_node_id()})
        edge.answered.set_status(session_id, "active")
        info = CallInfo(
            session_id=session_id, agent_id=row["agent_id"], agent_version=row["agent_version"],
            agent_config=config, direction=row["direction"], from_number=row["from_number"],
            to_number=row["to_number"], call_uuid=call_uuid, stream_id=start.stream_id,
            metadata=row["metadata"], extra_headers=start.extra_headers,
        )
        log.info("session %s: stream %s started (%s)", session_id, start.stream_id,
                 codec.content_type)
        status, reason = await _supervise(ws, state, info, transport, playout, codec, skip)
    finally:
        await playout.close()
        edge.answered.forget(session_id)
        try:
            _record(state, SESSION_END, session_id, {
                "id": session_id, "status": status, "end_reason": reason,
                "ended_at": iso(utcnow())})
        except Exception:
            log.exception("session %s: could not record the end of the call", session_id)
        await _wait_for_records(state)
        metrics.PLAYOUT_UNDERRUNS.inc(playout.stats.underruns)
        metrics.INBOUND_FRAMES_DROPPED.inc(transport.inbox.dropped)
        # Released last, so a drain waiting on this call also waits for its record.
        edge.admission.release(session_id)
        log.info("session %s: ended (%s, %s); %d frames in, %d dropped, %d messages skipped, "
                 "%d playout underruns", session_id, status, reason, transport.inbox.frames_in,
                 transport.inbox.dropped, skip.count, playout.stats.underruns)


class _NoRunner:
    """Stands in when no call host is installed (e.g. a call racing shutdown): the call fails
    and is hung up through the REST API instead of sitting in silence."""

    async def run(self, info: CallInfo, transport: CallTransport) -> str:
        raise RuntimeError("no call runner is installed (the call host is not running)")


async def _supervise(ws: WebSocket, state: AppState, info: CallInfo, transport: PlivoTransport,
                     playout: PlivoPlayout, codec: StreamCodec,
                     skip: _SkipLog) -> tuple[str, str]:
    runner: CallRunner = state.calls if state.calls is not None else _NoRunner()
    reader = asyncio.create_task(_read(ws, transport, playout, codec, skip),
                                 name=f"stream-reader-{info.session_id}")
    running = asyncio.create_task(runner.run(info, transport),
                                  name=f"call-runner-{info.session_id}")
    status, reason = "ended", "stream_closed"
    try:
        await asyncio.wait({reader, running}, return_when=asyncio.FIRST_COMPLETED)
        if reader.done():
            transport.finish(_result(reader, "stream_closed"))
            # The runner sees its frames end; give it a moment to wrap up.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(running), RUNNER_EXIT_GRACE_S)
        if running.done() and not running.cancelled() and running.exception() is None:
            reason = running.result() or transport.end_reason or "ended"
            # A call the runner ended because it failed (providers down, engine error) is
            # recorded as failed, the same way the event store reads its session.ended.
            status = end_status(reason)
        elif running.done() and not running.cancelled():
            exc = running.exception()
            log.error("session %s: call runner failed: %r", info.session_id, exc,
                      exc_info=exc)
            status, reason = "failed", "runner_error"
        else:
            log.warning("session %s: runner did not finish %.0f s after the stream ended",
                        info.session_id, RUNNER_EXIT_GRACE_S)
            reason = transport.end_reason or "stream_closed"
        if not reader.done():
            # The runner is done but the call is not: end it through the REST API (never by
            # just closing the socket, which would run the rest of the XML), then wait for
            # Plivo to close the stream; if it does not, we close it.
            if not transport.hangup_requested:
                try:
                    await transport.hangup(reason)
                except Exception as exc:
                    log.warning("session %s: hangup after the runner ended failed: %s",
                                info.session_id, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), FAR_END_CLOSE_GRACE_S)
            transport.finish(_result(reader, "runner_finished") if reader.done()
                             else "runner_finished")
        return status, str(reason)[:64]
    finally:
        for task in (reader, running):
            if not task.done():
                task.cancel()
        for task in (reader, running):
            with contextlib.suppress(BaseException):
                await task
        if ws.client_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await ws.close(code=1000)


def _result(task: asyncio.Task[str], default: str) -> str:
    if task.done() and not task.cancelled() and task.exception() is None:
        return task.result()
    return default


async def _read(ws: WebSocket, transport: PlivoTransport, playout: PlivoPlayout,
                codec: StreamCodec, skip: _SkipLog) -> str:
    """Route inbound messages until the stream ends; returns why it ended."""
    sid = transport.session_id
    while True:
        try:
            raw = await _receive_text(ws)
        except RuntimeError:  # socket already closed by our side
            return "stream_closed"
        if raw is None:
            return "stream_closed"
        try:
            msg = proto.parse_message(raw)
        except proto.ProtocolError as exc:
            skip(str(exc))
            transport.stats.messages_skipped += 1
            continue
        if isinstance(msg, proto.Media):
            if msg.track not in ("inbound", ""):
                continue  # audioTrack="both": we only listen to the caller
            if msg.encoding is not None and msg.encoding != codec.encoding:
                skip(f"media in {msg.encoding} on a {codec.encoding} stream")
                transport.stats.messages_skipped += 1
                continue
            if msg.payload:
                transport.push_media(msg.payload)
        elif isinstance(msg, proto.Dtmf):
            log.info("session %s: caller pressed %s", sid, msg.digit)
            transport.push_dtmf(msg.digit)
        elif isinstance(msg, proto.PlayedStream):
            playout.on_played(msg.name)
        elif isinstance(msg, proto.ClearedAudio):
            playout.on_cleared()
        elif isinstance(msg, proto.Stop):
            log.info("session %s: Plivo sent stop%s", sid,
                     f" ({msg.reason})" if msg.reason else "")
            return "stream_stopped"
        elif isinstance(msg, proto.PlayFailed):
            log.warning("session %s: Plivo could not play our audio: %s", sid,
                        msg.reason or "no reason given")
        elif isinstance(msg, proto.StreamError):
            log.warning("session %s: Plivo stream error: %s", sid, msg.reason or "unspecified")
        elif isinstance(msg, proto.Start):
            skip("duplicate 'start'")
        elif isinstance(msg, proto.Unknown):
            skip(f"unknown event {msg.event!r}")
