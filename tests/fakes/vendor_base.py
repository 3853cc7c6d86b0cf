"""Plumbing shared by the vendor fakes (`fake_openai`, `fake_anthropic`, `fake_deepgram`,
`fake_elevenlabs`, `fake_cartesia`).

Every fake is a real server on 127.0.0.1 (an ephemeral port) running on its **own thread and
event loop**, so it keeps answering — and keeps measuring — whatever the test's loop is doing,
and it can be used from sync or async code alike:

    with FakeOpenAI() as fake:            # or: fake = FakeOpenAI().start(); ...; fake.stop()
        cfg = {"base_url": fake.base_url, "api_key": {"env": "K"}}
        ...
        fake.fail_next("chat", Failure("status", status=429, retry_after=0.1))
        rec = fake.requests[-1]           # what the adapter sent (headers, JSON, WS messages)
        await fake.until(lambda: rec.closed_at is not None)

Common knobs: `api_key` (what the fake accepts), `first_byte_delay_s`, `chunk_delay_s`; scripted
failures per endpoint with `fail_next(endpoint, Failure(...), times=1)` / `fail_always(...)`.
TTS fakes speak a deterministic tone unless given `render=fn(text, sample_rate) -> int16 array`
(e.g. Piper), so an end-to-end test can have the "vendor" produce real, transcribable speech.
Timestamps are `time.monotonic()` so tests can compare them with their own clock.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
import math
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Self
from urllib.parse import parse_qs

import numpy as np

FAKE_API_KEY = "sk-fake-0123456789abcdefSECRET"

# The fakes' own logger is silenced: the vendor side legitimately sees the API key (the websockets
# server logs handshake headers at DEBUG) and a leak test must only see what *our* code logs.
# (`propagate = False` alone is not enough: pytest attaches its capture handlers to such loggers.)
_FAKE_LOG = logging.getLogger("tests.fakes.vendor")
_FAKE_LOG.propagate = False
_FAKE_LOG.setLevel(logging.CRITICAL)
_FAKE_LOG.disabled = True

# (text, sample_rate) -> mono int16 samples: what a TTS fake "says" for a text.
Render = Callable[[str, int], np.ndarray]

FailureKind = Literal["status", "hang", "drop", "close", "error_event"]


@dataclass
class Failure:
    """One scripted failure.

    - `status`: answer HTTP `status` with the vendor's error body (`message`, `code`);
      `retry_after` adds a Retry-After header. On a WebSocket endpoint the handshake is refused.
    - `hang`: accept the request and never answer (until the client goes away).
    - `drop`: send `after` chunks (HTTP) / messages or audio frames (WS), then cut the connection
      (mid-body for HTTP; no close frame for WS).
    - `close`: (WebSocket) after `after` messages, close with `close_code`/`close_reason`.
    - `error_event`: (streams) after `after` chunks, send the vendor's in-stream error message.
    """

    kind: FailureKind = "status"
    status: int = 500
    message: str = "The server had an error while processing your request."
    code: str | None = None
    retry_after: float | None = None
    after: int = 0
    close_code: int = 1011
    close_reason: str = ""

    def retry_headers(self, name: str = "Retry-After") -> dict[str, str]:
        """The Retry-After header (spelled `name`) that goes with a refusal, if one is scripted."""
        return {} if self.retry_after is None else {name: str(self.retry_after)}


class Failures:
    """Scripted failures per endpoint: a queue of one-shot failures and an optional standing one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: dict[str, deque[Failure]] = {}
        self._always: dict[str, Failure] = {}

    def next(self, endpoint: str, failure: Failure, times: int = 1) -> None:
        with self._lock:
            q = self._next.setdefault(endpoint, deque())
            q.extend([failure] * times)

    def always(self, endpoint: str, failure: Failure | None) -> None:
        with self._lock:
            if failure is None:
                self._always.pop(endpoint, None)
            else:
                self._always[endpoint] = failure

    def take(self, endpoint: str) -> Failure | None:
        with self._lock:
            q = self._next.get(endpoint)
            if q:
                return q.popleft()
            return self._always.get(endpoint)

    def clear(self) -> None:
        with self._lock:
            self._next.clear()
            self._always.clear()


@dataclass
class Recorded:
    """One request (HTTP) or connection (WebSocket) as the fake saw it."""

    endpoint: str
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""
    json: Any = None
    form: dict[str, Any] = field(default_factory=dict)
    # WebSocket: client messages in order (text frames decoded as JSON when possible; binary
    # frames as their length in bytes).
    messages: list[Any] = field(default_factory=list)
    audio_bytes: int = 0
    audio: bytearray = field(default_factory=bytearray)  # the binary frames' bytes, in order
    started_at: float = field(default_factory=time.monotonic)
    # When the client went away (HTTP disconnect, WS close/abort) or the exchange ended.
    closed_at: float | None = None
    # The server finished sending everything it meant to send.
    completed: bool = False
    status: int = 200
    close_code: int | None = None
    # HTTP: the client's (host, port), which tells a reused keep-alive connection from a new one.
    client: tuple[str, int] | None = None
    # A WebSocket upgrade (as opposed to a plain HTTP request).
    websocket: bool = False
    # Free-form per-vendor notes (e.g. Cartesia cancel times by context id).
    events: list[tuple[float, str, Any]] = field(default_factory=list)

    def q(self, name: str, default: str | None = None) -> str | None:
        v = self.query.get(name)
        return v[0] if v else default

    def json_messages(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if isinstance(m, dict)]

    def note(self, what: str, data: Any = None) -> None:
        self.events.append((time.monotonic(), what, data))


def parse_query(qs: str) -> dict[str, list[str]]:
    return parse_qs(qs, keep_blank_values=True)


def tone(n: int, sample_rate: int, start: int = 0, freq: float = 233.0,
         amplitude: int = 8000) -> np.ndarray:
    """A deterministic sine (phase-continuous from sample `start`): audio whose order and
    completeness a test can check by comparing with `tone(total, rate)`. 233 Hz shares no
    period with the usual rates and chunk sizes, so a restart or a gap never matches by luck."""
    t = (np.arange(start, start + n, dtype=np.float64)) / sample_rate
    return (amplitude * np.sin(2 * math.pi * freq * t)).astype(np.int16)


def speech_samples(text: str, sample_rate: int, ms_per_char: float) -> int:
    return max(1, int(len(text) * ms_per_char * sample_rate / 1000))


def speech(render: Render | None, text: str, sample_rate: int, ms_per_char: float,
           start: int = 0) -> np.ndarray:
    """What a TTS fake says for `text`: the `render` hook's audio, else a tone as long as the
    text takes to say at `ms_per_char` (continuing from sample `start`)."""
    if render is not None:
        return np.asarray(render(text, sample_rate), dtype=np.int16)
    return tone(speech_samples(text, sample_rate, ms_per_char), sample_rate, start=start)


class _LoopThread:
    """A private event loop on a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[Any], timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


class FakeVendor(abc.ABC):
    """Base of every vendor fake: lifecycle, recording, scripted failures, latency knobs."""

    thread_name = "fake-vendor"

    def __init__(self, *, api_key: str = FAKE_API_KEY, first_byte_delay_s: float = 0.0,
                 chunk_delay_s: float = 0.0) -> None:
        self.api_key = api_key
        self.first_byte_delay_s = first_byte_delay_s
        self.chunk_delay_s = chunk_delay_s
        self.failures = Failures()
        self.requests: list[Recorded] = []
        self._lt: _LoopThread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        if self._lt is None:
            self._lt = _LoopThread(self.thread_name)
            self._lt.run(self._start())
        return self

    def stop(self) -> None:
        if self._lt is not None:
            with contextlib.suppress(Exception):
                self._lt.run(self._shutdown())
            self._lt.stop()
            self._lt = None

    async def _shutdown(self) -> None:
        await self._stop()
        # Whatever is still running (handlers of clients that never closed) ends here, so the
        # loop closes clean.
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    @abc.abstractmethod
    def _servers(self) -> list[UvicornServer | WsServer]:
        """The servers this vendor runs (created on first call, inside the fake's loop)."""

    async def _start(self) -> None:
        for server in self._servers():
            await server.start()

    async def _stop(self) -> None:
        for server in self._servers():
            await server.stop()

    # -- scripting and inspection ------------------------------------------------------------

    def fail_next(self, endpoint: str, failure: Failure, times: int = 1) -> None:
        self.failures.next(endpoint, failure, times)

    def fail_always(self, endpoint: str, failure: Failure | None) -> None:
        self.failures.always(endpoint, failure)

    def reset(self) -> None:
        self.failures.clear()
        self.requests.clear()

    def for_endpoint(self, endpoint: str) -> list[Recorded]:
        return [r for r in self.requests if r.endpoint == endpoint]

    def open_sockets(self) -> list[Recorded]:
        """WebSocket upgrades whose connection is still open (accepted or still handshaking)."""
        return [r for r in self.requests if r.websocket and r.closed_at is None]

    def describe(self, rec: Recorded) -> str:
        """`rec` as a line of a failure message: which connection, opened when, what it did."""
        n = [r for r in self.requests if r.endpoint == rec.endpoint].index(rec)
        notes = ", ".join(what for _, what, _ in rec.events) or "no notes"
        return (f"{type(self).__name__} {rec.endpoint} #{n} (status {rec.status}, "
                f"{len(rec.messages)} messages, {notes}), opened "
                f"{time.monotonic() - rec.started_at:.2f}s ago")

    async def until(self, predicate: Callable[[], bool], within_s: float = 3.0) -> None:
        """Wait (without blocking the caller's loop) until `predicate()` holds."""
        deadline = time.monotonic() + within_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {within_s:.1f}s")
            await asyncio.sleep(0.005)

    def _record(self, rec: Recorded) -> Recorded:
        self.requests.append(rec)
        return rec

    def key_ok(self, presented: str | None) -> bool:
        return presented == self.api_key

    def _record_upgrade(self, connection: Any, endpoint: str) -> Recorded:
        """Record a WebSocket upgrade request; the record rides on the connection so the
        connection handler finds it."""
        path, query, headers = ws_request_info(connection)
        rec = self._record(Recorded(endpoint, "GET", path, query, headers, websocket=True))
        connection.fake_rec = rec
        # Watched from the upgrade on, not from the handler: a client that gives up during the
        # handshake (its open timeout, a cancelled reconnect) never reaches the handler, and its
        # record would otherwise stay open forever.
        watch_close(connection, rec)
        return rec

    async def _record_http(self, endpoint: str, scope: dict[str, Any],
                           receive: Receive) -> Recorded:
        """Record an HTTP request, its whole body included."""
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        query = parse_query(scope.get("query_string", b"").decode())
        rec = self._record(Recorded(endpoint, scope["method"], scope["path"], query, headers))
        client = scope.get("client")
        rec.client = (str(client[0]), int(client[1])) if client else None
        rec.body = await read_body(receive)
        return rec

    async def _paced(self, data: bytes, step: int,
                     failure: Failure | None) -> AsyncIterator[bytes]:
        """`data` as `step`-byte chunks of a streamed HTTP body, with the latency knobs applied;
        a scripted `drop` cuts the connection before chunk number `failure.after`."""
        if self.first_byte_delay_s:
            await asyncio.sleep(self.first_byte_delay_s)
        for n, i in enumerate(range(0, len(data), step)):
            if failure is not None and n == failure.after and failure.kind == "drop":
                raise DropConnection
            if n and self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            yield data[i:i + step]


# ---------------------------------------------------------------------------------------------
# HTTP fakes: uvicorn serving a raw ASGI callable
# ---------------------------------------------------------------------------------------------

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class HttpExchange:
    """One HTTP request inside an ASGI app, with helpers to answer it and notice disconnects."""

    def __init__(self, scope: dict[str, Any], receive: Receive, send: Send, rec: Recorded) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.rec = rec
        self._started = False

    async def json_response(self, status: int, payload: Any,
                            headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        await self.respond(status, body, {"content-type": "application/json", **(headers or {})})

    async def respond(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.rec.status = status
        hdrs = [(k.encode(), v.encode()) for k, v in headers.items()]
        hdrs.append((b"content-length", str(len(body)).encode()))
        await self.send({"type": "http.response.start", "status": status, "headers": hdrs})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})
        self.rec.completed = True
        self.rec.closed_at = self.rec.closed_at or time.monotonic()

    async def stream(self, status: int, headers: dict[str, str],
                     chunks: AsyncIterator[bytes]) -> None:
        """Send `chunks` as a chunked body while watching for the client going away; a
        disconnect cancels the producer at once and is timestamped in `rec.closed_at`."""
        self.rec.status = status
        hdrs = [(k.encode(), v.encode()) for k, v in headers.items()]

        async def produce() -> None:
            await self.send({"type": "http.response.start", "status": status, "headers": hdrs})
            async for chunk in chunks:
                await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})
            self.rec.completed = True

        await self.run_until_disconnect(produce())
        self.rec.closed_at = self.rec.closed_at or time.monotonic()

    async def scripted(self, failure: Failure | None,
                       error_body: Callable[[Failure], Any]) -> bool:
        """Carry out a scripted `status` failure (the vendor's error body, plus Retry-After) or
        `hang`; True when that answered the request."""
        if failure is not None and failure.kind == "status":
            await self.json_response(failure.status, error_body(failure),
                                     failure.retry_headers("retry-after"))
            return True
        if failure is not None and failure.kind == "hang":
            await self.hang()
            return True
        return False

    async def hang(self) -> None:
        """Never answer; return when the client disconnects."""
        await self.run_until_disconnect(asyncio.Event().wait())

    async def run_until_disconnect(self, work: Awaitable[None]) -> None:
        async def watch() -> None:
            while True:
                msg = await self.receive()
                if msg["type"] == "http.disconnect":
                    self.rec.closed_at = self.rec.closed_at or time.monotonic()
                    return

        worker = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(watch())
        done, pending = await asyncio.wait({worker, watcher}, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        for t in pending:
            with contextlib.suppress(BaseException):
                await t
        if worker in done and worker.exception() is not None:
            raise worker.exception()  # type: ignore[misc]


class DropConnection(Exception):
    """Raised inside a streaming body to make uvicorn abort the connection mid-response."""


async def read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            break
        parts.append(msg.get("body", b""))
        if not msg.get("more_body"):
            break
    return b"".join(parts)


def parse_multipart(content_type: str, body: bytes) -> dict[str, Any]:
    """multipart/form-data → {name: str | (filename, bytes, content_type)} (stdlib only)."""
    import email.parser
    import email.policy

    raw = b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    out: dict[str, Any] = {}
    if not msg.is_multipart():
        return out
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            out[str(name)] = (filename, payload, part.get_content_type())
        else:
            out[str(name)] = payload.decode("utf-8", "replace")
    return out


class UvicornServer:
    """uvicorn on a pre-bound 127.0.0.1 socket inside the fake's loop."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        import uvicorn

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):  # type: ignore[no-untyped-def]
                yield  # never touch signal handlers from a helper thread

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_config=None, lifespan="off", access_log=False,
                                interface="asgi3", log_level="warning",
                                timeout_graceful_shutdown=1)
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("fake server exited during start-up")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, 3)


# ---------------------------------------------------------------------------------------------
# WebSocket fakes: the `websockets` server (it can refuse handshakes with a body and abort a
# connection without a close frame, which ASGI cannot express)
# ---------------------------------------------------------------------------------------------


class WsServer:
    def __init__(self, handler: Callable[[Any], Awaitable[None]],
                 process_request: Callable[[Any, Any], Any] | None = None) -> None:
        self._handler = handler
        self._process_request = process_request
        self._server: Any = None
        self.port = 0

    async def start(self) -> None:
        from websockets.asyncio.server import serve

        async def serve_one(ws: Any) -> None:
            ws.fake_served = True
            await self._handler(ws)

        self._server = await serve(
            serve_one, "127.0.0.1", 0, process_request=self._process_request,
            compression=None, logger=_FAKE_LOG, max_size=None, max_queue=None,
            ping_interval=None, close_timeout=1,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._server.wait_closed(), 3)


def ws_reject(status: int, payload: Any, headers: dict[str, str] | None = None) -> Any:
    """A refused WebSocket upgrade carrying a JSON body (and extra headers)."""
    from http import HTTPStatus

    from websockets.datastructures import Headers
    from websockets.http11 import Response

    body = json.dumps(payload).encode()
    hdrs = Headers()
    hdrs["Content-Type"] = "application/json"
    hdrs["Content-Length"] = str(len(body))
    hdrs["Connection"] = "close"
    for k, v in (headers or {}).items():
        hdrs[k] = v
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    return Response(status, reason, hdrs, body)


def ws_request_info(connection: Any) -> tuple[str, dict[str, list[str]], dict[str, str]]:
    """(path, query, lower-cased headers) of a websockets server connection's request."""
    req = connection.request
    path, _, qs = req.path.partition("?")
    headers = {k.lower(): v for k, v in req.headers.raw_items()}
    return path, parse_query(qs), headers


def abort(connection: Any) -> None:
    """Cut a WebSocket without a close frame (the client sees 1006)."""
    connection.transport.abort()


def watch_close(connection: Any, rec: Recorded) -> asyncio.Task[None]:
    """Timestamp the moment the client's close (or abort) reaches the server, independently of
    whatever the handler is awaiting — the basis of the cancellation-latency checks. One watch
    per connection: `_record_upgrade` starts it, a handler calling again gets the same task."""
    task: asyncio.Task[None] | None = getattr(connection, "fake_close_watch", None)
    if task is not None:
        return task

    async def watch() -> None:
        await connection.wait_closed()
        rec.closed_at = rec.closed_at or time.monotonic()
        rec.close_code = connection.close_code
        if rec.status == 200 and not getattr(connection, "fake_served", False):
            rec.note("handshake-abandoned")  # accepted, but the client left before it was served

    task = asyncio.create_task(watch())
    connection.fake_close_watch = task
    return task


def refuse(rec: Recorded, status: int, payload: Any,
           headers: dict[str, str] | None = None) -> Any:
    """Refuse a WebSocket upgrade (see `ws_reject`) and note the status on its record."""
    rec.status = status
    return ws_reject(status, payload, headers)


async def cut(ws: Any, rec: Recorded, failure: Failure) -> bool:
    """Carry out a scripted mid-stream `drop` (no close frame) or `close` on a WebSocket;
    True when the connection is over."""
    if failure.kind == "drop":
        rec.note("dropped")
        abort(ws)
        return True
    if failure.kind == "close":
        await ws.close(failure.close_code, failure.close_reason)
        return True
    return False


# ---------------------------------------------------------------------------------------------
# Vendors served by a single server
# ---------------------------------------------------------------------------------------------


class HttpVendor(FakeVendor):
    """A vendor fake served by one HTTP server running the ASGI app `_app`."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._http: UvicornServer | None = None

    def _servers(self) -> list[UvicornServer | WsServer]:
        if self._http is None:
            self._http = UvicornServer(self._app)
        return [self._http]

    @property
    def port(self) -> int:
        assert self._http is not None, "start() the fake first"
        return self._http.port

    @abc.abstractmethod
    async def _app(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        """The vendor's HTTP API."""


class WsVendor(FakeVendor):
    """A vendor fake served by one WebSocket server: `_check` vets each upgrade request (None
    accepts it), `_handler` serves the connection."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._ws: WsServer | None = None

    def _servers(self) -> list[UvicornServer | WsServer]:
        if self._ws is None:
            self._ws = WsServer(self._handler, self._check)
        return [self._ws]

    @property
    def ws_base_url(self) -> str:
        assert self._ws is not None, "start() the fake first"
        return f"ws://127.0.0.1:{self._ws.port}"

    @abc.abstractmethod
    def _check(self, connection: Any, request: Any) -> Any:
        """None to accept the upgrade, or the refusal (`refuse`)."""

    @abc.abstractmethod
    async def _handler(self, ws: Any) -> None:
        """Serve one accepted connection."""


class WsTtsVendor(WsVendor):
    """A WebSocket TTS vendor fake: it "says" `ms_per_char` of tone per character (or what the
    `render` hook synthesises), sent in chunks of `chunk_ms`."""

    def __init__(self, *, ms_per_char: float = 40.0, chunk_ms: int = 100,
                 render: Render | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.render = render
        self.ms_per_char = ms_per_char
        self.chunk_ms = chunk_ms

    def _audio(self, text: str, rate: int, start: int) -> np.ndarray:
        return speech(self.render, text, rate, self.ms_per_char, start)
