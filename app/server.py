"""Running the app under uvicorn with a drain phase on SIGTERM/SIGINT.

Plain uvicorn closes every open WebSocket (each one a live phone call) the moment shutdown
starts, before the application's lifespan shutdown runs. `PhoneboothServer` inserts a drain
phase first: on the first signal it marks the service not ready, runs `AppState.drain()` (the
call host finishes or politely ends calls) and only then lets uvicorn shut down. A second
signal skips the drain.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

from app.config import Settings
from app.state import AppState

log = logging.getLogger(__name__)


class PhoneboothServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        state: AppState | None = getattr(self._app.state, "pb", None)
        first = self._drain_task is None and not self.should_exit
        if not first or state is None or self._loop is None or not self.started:
            super().handle_exit(sig, frame)
            return
        log.info("received %s: draining before shutdown", signal.Signals(sig).name)
        # Signal handlers run between bytecodes; hand the work to the loop safely.
        self._loop.call_soon_threadsafe(self._start_drain, state)

    def _start_drain(self, state: AppState) -> None:
        self._drain_task = asyncio.ensure_future(self._drain_then_exit(state))

    async def _drain_then_exit(self, state: AppState) -> None:
        try:
            await state.drain()
        except Exception:
            log.exception("drain failed")
        finally:
            self.should_exit = True

    async def drain_and_stop(self) -> None:
        """Programmatic SIGTERM (tests, embedding)."""
        state: AppState | None = getattr(self._app.state, "pb", None)
        if state is not None:
            await state.drain()
        self.should_exit = True


def make_server(app: FastAPI, settings: Settings, host: str, port: int) -> PhoneboothServer:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # our root handler (with redaction) formats uvicorn's records too
        lifespan="on",
        proxy_headers=True,
        # Uvicorn waits this long for connections after the drain before forcing them.
        timeout_graceful_shutdown=5,
        ws_ping_interval=20.0,
    )
    return PhoneboothServer(config, app)
