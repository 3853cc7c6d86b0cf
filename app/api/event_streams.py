"""Event streams over WebSocket: `WS /v1/sessions/{id}/events` and `WS /v1/events`.

Authentication: an API key as `Authorization: Bearer <key>` or, for browsers (which cannot set
headers on a WebSocket), `?api_key=<key>`. A missing or bad key gets close code 1008.

Frames are JSON text. The first is `{"type": "stream.subscribed", "session_id", "last_seq"}`;
then every event as `{id, type, session_id, seq, ts, data}`. `seq` increases by one per event of
a session, so a consumer can see a gap. The session stream replays the buffered events of the
call first (all of them by default, or those after `?since=<seq>`), and closes with 1000 after
`session.ended`. `?types=user.*,turn.completed` filters by type.

Backpressure: each connection has a bounded queue on the bus. A client that does not keep up is
dropped — close code 1013 with reason "slow consumer" — and the call is never slowed.
Unknown session: close code 4404.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from fastapi import APIRouter, WebSocket
from sqlalchemy import select
from starlette.websockets import WebSocketDisconnect, WebSocketState

from app.api.auth import authenticate
from app.db.models import Session
from app.events.bus import (
    CLOSE_SHUTDOWN,
    Envelope,
    EventBus,
    Subscription,
    SubscriptionClosed,
)
from app.events.webhooks import event_matches

log = logging.getLogger(__name__)

router = APIRouter(tags=["events"])

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # server shutting down
CLOSE_POLICY = 1008  # unauthorized
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013  # dropped as a slow consumer
CLOSE_NOT_FOUND = 4404
SEND_TIMEOUT_S = 10.0
ENDED_STATUSES = ("ended", "failed", "interrupted")


def _token(ws: WebSocket) -> str:
    auth = ws.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return ws.query_params.get("api_key", "")


def _types(ws: WebSocket) -> list[str]:
    raw = ws.query_params.get("types", "")
    return [t.strip() for t in raw.split(",") if t.strip()]


async def _close(ws: WebSocket, code: int, reason: str = "") -> None:
    if ws.application_state == WebSocketState.CONNECTED and \
            ws.client_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(code=code, reason=reason), SEND_TIMEOUT_S)


async def _accept_authenticated(ws: WebSocket) -> Any | None:
    """Accept the socket; return the app state, or None after closing it with a reason."""
    await ws.accept()
    pb = ws.app.state.pb
    try:
        principal = await authenticate(pb, _token(ws))
    except Exception:
        log.exception("event stream authentication failed")
        principal = None
    if principal is None:
        await _close(ws, CLOSE_POLICY, "invalid or missing API key")
        return None
    if pb.events is None:
        await _close(ws, CLOSE_INTERNAL, "event stream unavailable")
        return None
    return pb


def _frame(env: Envelope) -> str:
    return json.dumps(env.to_dict(), separators=(",", ":"), ensure_ascii=False, default=str)


async def _stream(ws: WebSocket, bus: EventBus, sub: Subscription, types: list[str],
                  *, until_ended: bool) -> None:
    async def pump() -> tuple[int, str]:
        while True:
            env = await sub.get()
            if event_matches(env.type, types):
                await asyncio.wait_for(ws.send_text(_frame(env)), SEND_TIMEOUT_S)
            if until_ended and env.type == "session.ended":
                return CLOSE_NORMAL, "session ended"

    async def drain_client() -> None:
        # We never expect messages, but must read to notice the client leaving.
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return

    pump_task = asyncio.create_task(pump())
    recv_task = asyncio.create_task(drain_client())
    try:
        done, _ = await asyncio.wait({pump_task, recv_task},
                                     return_when=asyncio.FIRST_COMPLETED)
        if pump_task in done:
            exc = pump_task.exception()
            if exc is None:
                code, reason = pump_task.result()
                await _close(ws, code, reason)
            elif isinstance(exc, SubscriptionClosed):
                code = CLOSE_GOING_AWAY if exc.reason == CLOSE_SHUTDOWN else CLOSE_TRY_AGAIN
                await _close(ws, code, exc.reason)
            elif isinstance(exc, TimeoutError):
                sub.close("send timeout")
                bus.dropped_subscribers_total += 1
                await _close(ws, CLOSE_TRY_AGAIN, "slow consumer")
            elif not isinstance(exc, WebSocketDisconnect):
                log.warning("event stream failed: %r", exc)
                await _close(ws, CLOSE_INTERNAL, "internal error")
    finally:
        sub.close("client gone")
        for t in (pump_task, recv_task):
            t.cancel()
        for t in (pump_task, recv_task):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


async def _hello(ws: WebSocket, session_id: str | None, last_seq: int) -> None:
    await ws.send_text(json.dumps({"type": "stream.subscribed", "session_id": session_id,
                                   "last_seq": last_seq}))


@router.websocket("/v1/sessions/{session_id}/events")
async def session_events(ws: WebSocket, session_id: str) -> None:
    pb = await _accept_authenticated(ws)
    if pb is None:
        return
    bus: EventBus = pb.events.bus
    try:
        since = int(ws.query_params.get("since", "0"))
    except ValueError:
        await _close(ws, CLOSE_POLICY, "since must be an integer")
        return
    async with pb.db.sessionmaker() as db:
        status = (await db.execute(
            select(Session.status).where(Session.id == session_id)
        )).scalar()
    if status is None and bus.last_seq(session_id) == 0:
        await _close(ws, CLOSE_NOT_FOUND, "session not found")
        return
    # Subscribe (with replay) before anything else can be published: no gap, no duplicate.
    sub = bus.subscribe(session_id, since_seq=since)
    if (status in ENDED_STATUSES or bus.session_ended(session_id)) and sub.qsize() == 0:
        # Over, and nothing (more) to replay: say so instead of waiting forever.
        sub.close("session ended")
        await _hello(ws, session_id, bus.last_seq(session_id))
        await _close(ws, CLOSE_NORMAL, "session ended")
        return
    try:
        await _hello(ws, session_id, bus.last_seq(session_id))
    except Exception:
        sub.close("client gone")
        return
    await _stream(ws, bus, sub, _types(ws), until_ended=True)


@router.websocket("/v1/events")
async def all_events(ws: WebSocket) -> None:
    pb = await _accept_authenticated(ws)
    if pb is None:
        return
    bus: EventBus = pb.events.bus
    sub = bus.subscribe(None)
    try:
        await _hello(ws, None, 0)
    except Exception:
        sub.close("client gone")
        return
    await _stream(ws, bus, sub, _types(ws), until_ended=False)
