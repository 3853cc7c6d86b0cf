"""Run the real app under uvicorn inside the test's event loop, on a free 127.0.0.1 port.

Used by the `live_server` fixture; import `run_live_server` directly when a test needs a server
with its own settings (e.g. two servers sharing one database).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from app.server import PhoneboothServer, make_server
from app.state import AppState


class _InProcessServer(PhoneboothServer):
    # Leave pytest's signal handlers alone: this server is stopped via should_exit.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class LiveServer:
    app: FastAPI
    host: str
    port: int
    server: PhoneboothServer
    task: asyncio.Task[None]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def state(self) -> AppState:
        return self.app.state.pb  # type: ignore[no-any-return]


def with_public_url(settings: Settings, url: str) -> Settings:
    return settings.model_copy(
        update={"server": settings.server.model_copy(update={"public_url": url})}
    )


@contextlib.asynccontextmanager
async def run_live_server(settings: Settings,
                          public_host: str | None = None) -> AsyncIterator[LiveServer]:
    """Start the app (lifespan included) on 127.0.0.1:<free port>; `server.public_url` is set
    to the real address (or http://<public_host>:<port>) so signed webhook URLs match. On exit
    it drains (AppState.drain) and stops like `phonebooth serve` does on SIGTERM."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()[:2]
    app = create_app(with_public_url(settings, f"http://{public_host or host}:{port}"))
    base = make_server(app, settings, host, port)
    server = _InProcessServer(base.config, app)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="live-server")
    try:
        while not server.started:
            if task.done():
                task.result()  # surface a start-up exception
                raise RuntimeError("live server exited during start-up (see log)")
            await asyncio.sleep(0.01)
        yield LiveServer(app=app, host=host, port=port, server=server, task=task)
    finally:
        # Same order as SIGTERM in production: drain hooks first, then uvicorn's shutdown.
        if server.started and not task.done():
            await server.drain_and_stop()
        server.should_exit = True
        if not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 15)
        sock.close()
