"""Lifecycle component (see app.main.COMPONENTS): starts the event plumbing with the server.

Sets `state.events` to an `EventsService` whose webhook signatures use the secret derived from
the server's secret key (app.events.signing), and stops it — flushing queued writes — on shutdown.

At start, the records an earlier run left in the outbox (a crash, a database outage at
shutdown) are replayed first; only then are the sessions that run left live closed as
`interrupted`, so a call whose end was still queued gets its real end instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI

from app.db.models import utcnow
from app.db.repos import sessions as sessions_repo
from app.events.service import EventsService
from app.events.signing import signing_secret_from_box
from app.state import AppState

log = logging.getLogger(__name__)

# How long start-up waits for an earlier run's records before serving anyway.
LEFTOVER_REPLAY_S = 30.0


async def _close_leftover_sessions(state: AppState) -> None:
    # Another replica's call can't still be live after the longest allowed call.
    node = sessions_repo.current_node_id()
    stale = utcnow() - timedelta(seconds=state.settings.limits.max_call_duration_s + 300)
    async with state.db.transaction() as s:
        closed = await sessions_repo.mark_interrupted(s, node_id=node, stale_before=stale)
    if closed:
        log.warning("marked %d session(s) left live by an earlier run as interrupted", closed)


@asynccontextmanager
async def events_component(app: FastAPI, state: AppState) -> AsyncIterator[EventsService]:
    service = EventsService(
        state.settings.events,
        state.db.sessionmaker,
        signing_secret_from_box(state.crypto),
        outbox_settings=state.settings.outbox,
        outbox_path=state.settings.outbox_path,
    )
    await service.start()
    state.events = service
    try:
        await asyncio.wait_for(service.flush(), LEFTOVER_REPLAY_S)
    except TimeoutError:
        log.warning("outbox: %d record(s) from an earlier run still replaying",
                    service.outbox.depth)
    await _close_leftover_sessions(state)
    try:
        yield service
    finally:
        await service.stop()
        state.events = None
