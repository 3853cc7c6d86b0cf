"""The Plivo edge's shared pieces for one server process, and its lifecycle component.

`PlivoEdge` holds the REST client, the call admission counter and the stream-token key, and
knows the public URLs Plivo is given (all derived from `server.public_url`, because Plivo signs
exactly the URL it dials). `plivo_edge_component` creates it at start-up, registers the call
drain as a drain hook (run on SIGTERM by app.server before sockets close) and closes the REST
client at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from app.bus.base import get_bus
from app.calls.admission import CallAdmission
from app.config import Settings
from app.db.models import utcnow
from app.db.repos import sessions as sessions_repo
from app.outbox.sessions import SESSION_END, iso
from app.state import AppState
from app.telephony.plivo.offline import AnsweredCalls, RoutingCache
from app.telephony.plivo.rest import PlivoRestClient
from app.telephony.plivo.token import TOKEN_KEY_PURPOSE

log = logging.getLogger(__name__)

EDGE_KEY = "app.telephony.plivo"


@dataclass
class PlivoEdge:
    settings: Settings
    admission: CallAdmission
    rest: PlivoRestClient
    token_key: bytes
    # Answering calls while the database is away (app.telephony.plivo.offline).
    routes: RoutingCache
    answered: AnsweredCalls = field(default_factory=AnsweredCalls)

    @property
    def public_url(self) -> str:
        return self.settings.server.public_url

    @property
    def auth_tokens(self) -> list[str]:
        p = self.settings.plivo
        return [t.get_secret_value() for t in (p.auth_token, p.main_auth_token)
                if t is not None and t.get_secret_value()]

    def url(self, path: str, query: dict[str, str] | None = None) -> str:
        return self.public_url + path + (f"?{urlencode(query)}" if query else "")

    def stream_url(self, session_id: str, token: str) -> str:
        base = self.public_url
        ws = "wss://" + base[len("https://"):] if base.startswith("https://") \
            else "ws://" + base[len("http://"):]
        return f"{ws}/plivo/stream/{quote(session_id)}?{urlencode({'token': token})}"


def get_edge(state: AppState) -> PlivoEdge:
    edge = state.extras.get(EDGE_KEY)
    if edge is None:
        raise RuntimeError("the Plivo edge is not started (plivo_edge_component missing)")
    return edge


def build_edge(state: AppState) -> PlivoEdge:
    s = state.settings
    token = s.plivo.auth_token.get_secret_value() if s.plivo.auth_token else None
    rest = PlivoRestClient(s.plivo.api_base_url, s.plivo.auth_id, token,
                           timeout_s=s.plivo.request_timeout_s)
    pending: set[asyncio.Task[None]] = set()

    async def close_unconnected(session_id: str) -> None:
        if await get_bus(state).owner(session_id) is not None:
            return  # its stream connected to another process, which hosts the call now
        edge = state.extras.get(EDGE_KEY)
        if edge is not None:
            edge.answered.forget(session_id)
        if state.events is not None:
            # In order behind the session's creation, which may still be in the outbox.
            state.events.outbox.put(SESSION_END, session_id, {
                "id": session_id, "status": "failed", "end_reason": "stream_never_connected",
                "ended_at": iso(utcnow())})
            return
        try:
            async with state.db.transaction() as db:
                await sessions_repo.end(db, session_id, status="failed",
                                        end_reason="stream_never_connected")
        except Exception as exc:
            log.warning("could not close session %s: %s", session_id, exc)

    def on_expire(session_id: str) -> None:
        # A call answered whose stream never came (and no hangup callback closed it).
        task = asyncio.get_running_loop().create_task(close_unconnected(session_id))
        pending.add(task)
        task.add_done_callback(pending.discard)

    return PlivoEdge(
        settings=s,
        admission=CallAdmission(s.limits.max_concurrent_calls, on_expire=on_expire,
                                seats=get_bus(state).seats),
        rest=rest,
        token_key=state.crypto.derive(TOKEN_KEY_PURPOSE),
        routes=RoutingCache(state.db, s.outbox.routing_refresh_s),
    )


@contextlib.asynccontextmanager
async def plivo_edge_component(app: Any, state: AppState) -> AsyncIterator[PlivoEdge]:
    edge = build_edge(state)
    state.extras[EDGE_KEY] = edge
    try:
        await edge.routes.load()
    except Exception as exc:  # the answer URL reads the database itself while it answers
        log.warning("could not load the number → agent table: %s", exc)
    outbox = state.events.outbox if state.events is not None else None
    edge.routes.start(lambda: outbox is None or outbox.db_up)
    if outbox is not None:
        outbox.on_database_back(edge.routes.invalidate)

    def calls_admitting() -> bool:
        return not edge.admission.draining

    state.add_ready_check(calls_admitting)
    if not edge.rest.configured:
        log.warning("plivo.auth_id/auth_token not set: hangup, transfer and outbound calls "
                    "through the Plivo REST API are unavailable")
    async def drain_calls() -> None:
        # Runs on SIGTERM before the HTTP server closes sockets (app.server), so live calls
        # can finish; stragglers are hung up politely through the REST API.
        await edge.admission.drain(state.settings.limits.drain_timeout_s)

    state.add_drain_hook(drain_calls)
    try:
        yield edge
    finally:
        try:
            # Normally a no-op (the SIGTERM drain already ran); covers embedded shutdowns.
            await edge.admission.drain(0)
        finally:
            await edge.routes.stop()
            await edge.rest.aclose()
            state.extras.pop(EDGE_KEY, None)
