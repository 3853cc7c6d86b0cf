"""Lifecycle component (see app.main.COMPONENTS): starts the event plumbing with the server.

Sets `state.events` to an `EventsService` whose webhook signatures use the secret derived from
the server's secret key (app.events.signing), and stops it — flushing queued writes — on shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.events.service import EventsService
from app.events.signing import signing_secret_from_box
from app.state import AppState


@asynccontextmanager
async def events_component(app: FastAPI, state: AppState) -> AsyncIterator[EventsService]:
    service = EventsService(
        state.settings.events,
        state.db.sessionmaker,
        signing_secret_from_box(state.crypto),
    )
    await service.start()
    state.events = service
    try:
        yield service
    finally:
        await service.stop()
        state.events = None
