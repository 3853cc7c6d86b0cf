"""The FastAPI application: `create_app(settings)`.

Start-up order (lifespan): logging → database (+ migrations) → secret key → demo agent →
lifecycle COMPONENTS in order (tracing first, when configured; then the events component
replays what the outbox kept from an earlier run and closes the sessions a crash left live as
`interrupted`). Shutdown runs the components' exits in reverse (call draining lives in the call
host's component; tracing flushes last), then closes the database.

Extension points, one line each:
- `PUBLIC_ROUTERS`: routers without API-key auth (health, Plivo webhooks and streams).
- `V1_ROUTERS`: routers mounted under /v1 behind Bearer API-key auth.
- `COMPONENTS`: `(app, state) -> async context manager` factories for subsystems that start
  with the server and stop with it (model loading, call host, event delivery).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI

from app.api import (
    agents,
    api_keys,
    calls,
    credentials,
    event_streams,
    health,
    metrics,
    numbers,
    openapi,
    problems,
    session_control,
    session_state,
    sessions,
    usage,
)
from app.api.auth import require_api_key
from app.bus.component import bus_component
from app.calls.component import call_host_component
from app.calls.recordings import recordings_component
from app.calls.tracing import tracing_component
from app.config import Settings, load_settings
from app.console import live as console_live
from app.console import playground as console_playground
from app.console import routes as console_routes
from app.db import migrate
from app.db.engine import Database, open_database
from app.db.repos import sessions as sessions_repo
from app.demo_agent import ensure_demo_agent
from app.events.component import events_component
from app.logging_setup import RequestIdMiddleware, configure_logging, register_secret
from app.security.crypto import SecretBox
from app.security.secret_key import load_or_create_secret_key
from app.state import AppState
from app.telephony.plivo import routes as plivo_routes
from app.telephony.plivo import transfer_routes as plivo_transfer_routes
from app.telephony.plivo.edge import plivo_edge_component

log = logging.getLogger(__name__)

VERSION = "0.1.0"

PUBLIC_ROUTERS: list[APIRouter] = [
    health.router,
    metrics.router,  # Prometheus exposition
    event_streams.router,  # authenticates itself (Bearer or ?api_key=), closes 1008
    plivo_routes.router,  # Plivo signs its requests (V3) instead of an API key
    plivo_transfer_routes.router,  # signed the same way
    console_routes.router,  # static page; it calls the API with the key the operator types
    console_playground.router,  # authenticates with its first message, closes 1008
]

V1_ROUTERS: list[APIRouter] = [
    agents.router,
    numbers.router,
    credentials.router,
    api_keys.router,
    sessions.router,
    usage.router,
    session_state.router,
    session_control.router,
    calls.router,
    console_live.router,
]

Component = Callable[[FastAPI, AppState], AbstractAsyncContextManager[Any]]
COMPONENTS: list[Component] = [
    tracing_component,  # first: it outlives the calls, so their spans are flushed at exit
    events_component,
    recordings_component,  # the recording store and its retention sweeps; before the calls
    bus_component,  # after events (it shares them), before what admits and hosts calls
    call_host_component,  # models + the conversation runner; before the edge so it outlives it
    plivo_edge_component,  # REST client, call admission; drains calls on SIGTERM
]


async def _open_store(settings: Settings) -> Database:
    db = open_database(settings.database)
    try:
        if settings.database.migrate_on_start:
            await migrate.upgrade(db)
        else:
            await db.ping()
    except Exception as exc:
        await db.dispose()
        log.error(
            "database %s is not usable: %s",
            db.url.render_as_string(hide_password=True), exc,
        )
        raise
    return db


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    configure_logging(settings)
    db = await _open_store(settings)
    try:
        secret = load_or_create_secret_key(settings.security)
        register_secret(secret)
        state = AppState(settings=settings, db=db, crypto=SecretBox(secret))
        app.state.pb = state
        node = settings.server.node_id or socket.gethostname()
        sessions_repo.set_node_id(node)
        if settings.demo.create_on_start:
            await ensure_demo_agent(db)
        async with AsyncExitStack() as stack:
            for component in COMPONENTS:
                await stack.enter_async_context(component(app, state))
            log.info("phonebooth %s ready on %s", VERSION, settings.server.public_url)
            yield
            log.info("shutting down")
    finally:
        await db.dispose()
        log.info("stopped")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    app = FastAPI(
        title="Phonebooth",
        version=VERSION,
        description="Self-hosted voice-agent runtime for Plivo phone calls. "
        "Authenticate /v1 with `Authorization: Bearer <API key>`.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    problems.install(app)
    openapi.install(app)
    app.add_middleware(RequestIdMiddleware)
    for router in PUBLIC_ROUTERS:
        app.include_router(router)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
    for router in V1_ROUTERS:
        v1.include_router(router)
    app.include_router(v1)
    return app
