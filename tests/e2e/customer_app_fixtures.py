"""A customer app on 127.0.0.1 for the customer-WebSocket end-to-end tests.

`RawApp` is a bare `websockets` server: it records every connection's upgrade headers and
messages, and hands each message to `on_message(conn, msg)` so a test scripts the app's side
exactly (including junk and dying mid-call). Tests of the customer helper use `app.voiceapp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response


@dataclass
class AppConn:
    ws: ServerConnection
    headers: dict[str, str]
    path: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, msg: dict[str, Any] | str) -> None:
        await self.ws.send(msg if isinstance(msg, str) else json.dumps(msg))

    def of_type(self, name: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type", m.get("event")) == name]


Handler = Callable[[AppConn, dict[str, Any]], Awaitable[None]]


class RawApp:
    def __init__(self, on_message: Handler | None = None, *, refuse: bool = False) -> None:
        self.on_message = on_message
        self.refuse = refuse  # answer every upgrade with 503
        self.conns: list[AppConn] = []
        self.errors: list[Exception] = []
        self._server: Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/voice"

    async def __aenter__(self) -> RawApp:
        self._server = await serve(self._handle, "127.0.0.1", self.port,
                                   process_request=self._check, max_size=16 * 1024 * 1024)
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    def _check(self, conn: ServerConnection, request: Request) -> Response | None:
        if self.refuse:
            return conn.respond(503, "not now\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        conn = AppConn(ws, dict(ws.request.headers.raw_items()), ws.request.path)
        self.conns.append(conn)
        try:
            async for raw in ws:
                msg = json.loads(raw)
                conn.messages.append(msg)
                if self.on_message is not None:
                    try:
                        await self.on_message(conn, msg)
                    except ConnectionClosed:
                        raise
                    except Exception as exc:  # a broken script must show, not hang the test
                        self.errors.append(exc)
                        raise
        except ConnectionClosed:
            pass
        finally:
            conn.closed.set()

    async def wait_message(self, name: str, *, n: int = 1, conn: int = -1,
                           within_s: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + within_s
        while True:
            # `conn` may name a connection that is not there yet (a reconnect to come).
            there = -len(self.conns) <= conn < len(self.conns)
            if there and len(self.conns[conn].of_type(name)) >= n:
                return self.conns[conn].of_type(name)
            if time.monotonic() > deadline or self.errors:
                seen = [m.get("type", m.get("event")) for c in self.conns for m in c.messages]
                raise AssertionError(f"app never got {n}x {name}; got {seen[-30:]}; "
                                     f"script errors: {self.errors!r}")
            await asyncio.sleep(0.02)

    async def wait_connections(self, n: int, within_s: float = 20.0) -> None:
        deadline = time.monotonic() + within_s
        while len(self.conns) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.conns)} connection(s), expected {n}")
            await asyncio.sleep(0.02)
