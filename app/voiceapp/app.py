"""`VoiceApp`: a WebSocket server for a customer's app (docs/customer-websocket.md).

Phonebooth opens one WebSocket per call to the app; the app registers handlers per event type
(`@app.on("tool.called")`), each called with the connection's `Session` and the `Event`. Each
event's handlers run in their own task, started in arrival order, so a slow handler (a tool
that takes seconds, a streamed LLM answer) never holds up the next event — `llm.cancelled`
reaches the app while an `llm.request` handler still streams. Sync handlers run in a worker
thread (`asyncio.to_thread`). A handler's exception is logged; the connection goes on.

With a `signing_secret`, an upgrade request whose signature does not verify is refused with
HTTP 401 before any handler runs (`app.events.signing.verify_connection`: the URL Phonebooth
signed must have the path and query the request arrived on, since the app cannot know the
external URL behind a proxy or tunnel).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from app.events.signing import (
    DEFAULT_TOLERANCE_S,
    SESSION_ID_HEADER,
    SignatureError,
    verify_connection,
)
from app.voiceapp.event import Event
from app.voiceapp.session import Session

if TYPE_CHECKING:
    from starlette.websockets import WebSocket
    from websockets.asyncio.server import Server as WsServer

log = logging.getLogger("app.voiceapp")

EventHandler = Callable[[Session, Event], Any]
SessionHandler = Callable[[Session], Any]
H = TypeVar("H", bound=Callable[..., Any])
Receive = Callable[[], Awaitable[str | None]]


class VoiceApp:
    """Handlers for the events of Phonebooth's calls, and the server that runs them."""

    def __init__(
        self,
        signing_secret: str | None = None,
        *,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
        handler_grace_s: float = 5.0,
    ) -> None:
        self.signing_secret = signing_secret
        self.tolerance_s = tolerance_s
        self.handler_grace_s = handler_grace_s
        self._handlers: dict[str, list[EventHandler]] = {}
        self._catch_all: list[EventHandler] = []
        self._on_connect: list[SessionHandler] = []
        self._on_disconnect: list[SessionHandler] = []

    # -- registration ---------------------------------------------------------------------------

    def on(self, event_type: str) -> Callable[[H], H]:
        """`@app.on("tool.called")`: `handler(session, event)` for each event of that type
        (`type` of Phonebooth's events, `event` of audio mode's stream messages: `media`...)."""

        def register(handler: H) -> H:
            self._handlers.setdefault(event_type, []).append(handler)
            return handler

        return register

    def on_event(self, handler: H) -> H:
        """`@app.on_event`: `handler(session, event)` for every event, after the typed ones."""
        self._catch_all.append(handler)
        return handler

    def on_connect(self, handler: H) -> H:
        """`@app.on_connect`: `handler(session)` once the connection is accepted, before its
        first event is handled."""
        self._on_connect.append(handler)
        return handler

    def on_disconnect(self, handler: H) -> H:
        """`@app.on_disconnect`: `handler(session)` after the connection closed."""
        self._on_disconnect.append(handler)
        return handler

    # -- the signature --------------------------------------------------------------------------

    def verify(self, headers: Mapping[str, str], path_and_query: str) -> str:
        """The session id of an upgrade request; SignatureError when a secret is set and the
        request's signature does not verify."""
        if self.signing_secret is None:
            return _get(headers, SESSION_ID_HEADER) or ""
        return verify_connection(self.signing_secret, headers, path_and_query, self.tolerance_s)

    # -- running --------------------------------------------------------------------------------

    def serve(self, host: str = "127.0.0.1", port: int = 9000) -> Server:
        """A server for this app: `async with app.serve(host, 0) as server:` or
        `server = await app.serve(...)`; `server.port` is the bound port."""
        return Server(self, host, port)

    def run(self, host: str = "0.0.0.0", port: int = 9000) -> None:
        """Serve until interrupted (Ctrl-C)."""

        async def main() -> None:
            async with self.serve(host, port) as server:
                await server.serve_forever()

        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            pass

    async def handle(self, websocket: WebSocket) -> None:
        """Run one connection from a Starlette / FastAPI WebSocket route:

            @api.websocket("/voice")
            async def voice(ws: WebSocket) -> None:
                await app.handle(ws)
        """
        try:
            session_id = self.verify(websocket.headers, _scope_target(websocket.scope))
        except SignatureError as exc:
            log.warning("voiceapp: refused a connection: %s", exc)
            if "websocket.http.response" in websocket.scope.get("extensions", {}):
                from starlette.responses import PlainTextResponse

                await websocket.send_denial_response(
                    PlainTextResponse(f"{exc}\n", status_code=HTTPStatus.UNAUTHORIZED))
            else:  # the server cannot answer with an HTTP status: refuse the handshake
                await websocket.close(code=1008)
            return
        await websocket.accept()

        async def receive() -> str | None:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return None
                text = message.get("text")
                if text is not None:
                    return str(text)
                log.warning("voiceapp: skipped a binary frame")

        await self._run_connection(receive, websocket.send_text, session_id)

    # -- one connection -------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        try:
            self.verify(request.headers, request.path)
        except SignatureError as exc:
            log.warning("voiceapp: refused a connection to %s: %s", request.path, exc)
            return connection.respond(HTTPStatus.UNAUTHORIZED, f"{exc}\n")
        return None

    async def _ws_handler(self, connection: ServerConnection) -> None:
        request = connection.request
        session_id = (_get(request.headers, SESSION_ID_HEADER) or "") if request else ""

        async def receive() -> str | None:
            while True:
                try:
                    message = await connection.recv()
                except ConnectionClosed:
                    return None
                if isinstance(message, str):
                    return message
                log.warning("voiceapp: skipped a binary frame")

        await self._run_connection(receive, connection.send, session_id)

    async def _run_connection(
        self, receive: Receive, send: Callable[[str], Awaitable[None]], session_id: str
    ) -> None:
        session = Session(send, agent_session_id=session_id)
        tasks: set[asyncio.Task[None]] = set()
        log.info("voiceapp: session %s connected", session_id or "?")
        try:
            for handler in self._on_connect:
                await self._invoke(handler, session)
            while True:
                text = await receive()
                if text is None:
                    break
                event = _parse(text)
                if event is None:
                    continue
                session._observe(event)
                for handler in [*self._handlers.get(event.type, ()), *self._catch_all]:
                    task = asyncio.create_task(self._invoke(handler, session, event))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            await session._close()
            if tasks:
                _done, pending = await asyncio.wait(set(tasks), timeout=self.handler_grace_s)
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.wait(pending)
            for handler in self._on_disconnect:
                await self._invoke(handler, session)
            log.info("voiceapp: session %s disconnected", session.agent_session_id or "?")

    async def _invoke(self, handler: Callable[..., Any], *args: Any) -> None:
        name = getattr(handler, "__qualname__", repr(handler))
        try:
            if inspect.iscoroutinefunction(handler):
                await handler(*args)
                return
            result = await asyncio.to_thread(handler, *args)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            event = args[1].type if len(args) > 1 else "connection"
            log.exception("voiceapp: handler %s failed on %s", name, event)


class Server:
    """A running (or about to run) VoiceApp server on the `websockets` library."""

    def __init__(self, app: VoiceApp, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self._port = port
        self._server: WsServer | None = None

    async def start(self) -> Server:
        if self._server is None:
            if self.app.signing_secret is None:
                log.warning("voiceapp: no signing secret: connections are not verified")
            self._server = await ws_serve(
                self.app._ws_handler, self.host, self._port,
                process_request=self.app._process_request)
            log.info("voiceapp: listening on %s", self.url())
        return self

    @property
    def port(self) -> int:
        """The bound port (the real one when asked for port 0)."""
        if self._server is None:
            return self._port
        for sock in self._server.sockets:
            return int(sock.getsockname()[1])
        return self._port

    def url(self, path: str = "/") -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{self.port}{path}"

    async def serve_forever(self) -> None:
        await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        """Stop listening, close the open connections (1001) and wait for their handlers."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def __await__(self) -> Any:
        return self.start().__await__()

    async def __aenter__(self) -> Server:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _get(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lname = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lname), None)
    return value


def _scope_target(scope: Mapping[str, Any]) -> str:
    """The request target (path and query) of an ASGI connection, as the client sent it."""
    raw = scope.get("raw_path")
    if isinstance(raw, bytes) and raw:
        path = raw.decode("latin-1")
    else:
        path = quote(str(scope.get("path") or "/"))
    query = scope.get("query_string") or b""
    qs = query.decode("latin-1") if isinstance(query, bytes) else str(query)
    return f"{path}?{qs}" if qs else path


def _parse(text: str) -> Event | None:
    try:
        data = json.loads(text)
    except ValueError:
        log.warning("voiceapp: skipped a message that is not JSON: %.200s", text)
        return None
    if not isinstance(data, dict):
        log.warning("voiceapp: skipped a message that is not an object: %.200s", text)
        return None
    return Event(data)
