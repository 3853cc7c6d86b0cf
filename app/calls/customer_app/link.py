"""The socket to a customer app: signed connect with retries, one reconnect mid-call, a queue.

At call start `open()` tries `connect_attempts` times (backoff 0.25 s, doubling) and raises
`AppUnreachable` when none succeeds. Mid-call, a socket that drops is reopened once; after a
successful reopen `on_reopened` runs (the bridge says `session.started` again, `resumed: true`);
when that fails, or the socket drops a second time, `on_lost` runs and the link stays closed.
Messages are queued (bounded: an app that stops reading loses the oldest messages, counted,
rather than the call its memory) and a message whose send failed is sent again on the reopened
socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from app.agent_config import AppSocketSettings
from app.calls.customer_app.commands import MAX_MESSAGE_BYTES
from app.events.signing import sign_connection

log = logging.getLogger(__name__)

MAX_QUEUED = 2000  # ~40 s of audio-mode media, or far more events than a call makes
FIRST_BACKOFF_S = 0.25
CLOSE_FLUSH_S = 1.0
# A call reopens a dropped socket once; an app that drops it again is lost for this call.
MAX_REOPENS = 1


class AppUnreachable(Exception):
    """No connection to the app could be made (the message says why, never a header value)."""


class AppLink:
    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        *,
        session_id: str,
        signing_secret: str,
        settings: AppSocketSettings,
        on_message: Callable[[str | bytes], None],
        on_reopened: Callable[[], None],
        on_lost: Callable[[], None],
    ) -> None:
        self.url = url
        self._headers = headers
        self.session_id = session_id
        self._secret = signing_secret
        self.settings = settings
        self._on_message = on_message
        self._on_reopened = on_reopened
        self._on_lost = on_lost
        self._queue: deque[str] = deque()
        self._ready = asyncio.Event()
        self._drained = asyncio.Event()  # set whenever everything queued was sent
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.lost = False
        self.dropped = 0  # messages dropped because the app did not keep up
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self.lost

    # -- connecting -----------------------------------------------------------------------------
    async def _connect_once(self) -> ClientConnection:
        headers = {**self._headers, **sign_connection(self._secret, self.session_id, self.url)}
        return await connect(self.url, additional_headers=headers,
                             open_timeout=self.settings.connect_timeout_s,
                             max_size=MAX_MESSAGE_BYTES, ping_interval=20, ping_timeout=20,
                             close_timeout=2, user_agent_header="Phonebooth")

    async def _connect(self, attempts: int) -> ClientConnection:
        delay = FIRST_BACKOFF_S
        why = "no attempt made"
        for attempt in range(1, attempts + 1):
            try:
                return await self._connect_once()
            except InvalidURI as exc:
                raise AppUnreachable(f"bad websocket_url: {exc}") from None
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                why = _describe(exc)
                log.warning("session %s: app connect attempt %d/%d failed: %s",
                            self.session_id, attempt, attempts, why)
            if attempt < attempts:
                await asyncio.sleep(delay)
                delay *= 2
        raise AppUnreachable(why)

    async def open(self) -> None:
        self._ws = await self._connect(self.settings.connect_attempts)
        self._task = asyncio.create_task(self._run(), name=f"app-link-{self.session_id}")

    # -- sending --------------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        if self._closing or self.lost:
            return
        if len(self._queue) >= MAX_QUEUED:
            self._queue.popleft()
            if not self._queue:
                self._drained.set()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 500 == 0:
                log.warning("session %s: the app is not reading; %d message(s) dropped",
                            self.session_id, self.dropped)
        self._queue.append(json.dumps(message, separators=(",", ":"), default=str))
        self._drained.clear()
        self._ready.set()

    # -- the running socket ---------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            ws = self._ws
            assert ws is not None
            reader = asyncio.create_task(self._read(ws))
            writer = asyncio.create_task(self._write(ws))
            await asyncio.wait([reader, writer], return_when=asyncio.FIRST_COMPLETED)
            for t in (reader, writer):
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            if self._closing:
                return
            if self.reconnects >= MAX_REOPENS:
                log.warning("session %s: the app's socket dropped again (%s)", self.session_id,
                            _close_reason(ws))
                self._give_up()
                return
            log.warning("session %s: the app's socket dropped (%s); reopening it once",
                        self.session_id, _close_reason(ws))
            try:
                self._ws = await self._connect(1)
            except AppUnreachable as exc:
                log.warning("session %s: the app cannot be reached again: %s",
                            self.session_id, exc)
                self._give_up()
                return
            self.reconnects += 1
            self._on_reopened()

    def _give_up(self) -> None:
        self.lost = True
        self._ws = None
        self._on_lost()

    async def _read(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                try:
                    self._on_message(raw)
                except Exception:  # one bad command must not end the link
                    log.exception("session %s: handling an app message failed", self.session_id)

    async def _write(self, ws: ClientConnection) -> None:
        while True:
            while not self._queue:
                self._ready.clear()
                await self._ready.wait()
            try:
                await ws.send(self._queue[0])
            except ConnectionClosed:
                return  # kept at the head of the queue: sent again after a reopen
            self._queue.popleft()
            if not self._queue:
                self._drained.set()

    async def close(self) -> None:
        """Send what is queued (briefly), then close with 1000."""
        if self._closing:
            return
        if self._queue and self._ws is not None and not self.lost:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), CLOSE_FLUSH_S)
        self._closing = True
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(1000, "call ended"), 3.0)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


def _describe(exc: BaseException) -> str:
    if isinstance(exc, InvalidStatus):
        return f"the app refused the connection (HTTP {exc.response.status_code})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"[:200]


def _close_reason(ws: ClientConnection) -> str:
    code = ws.close_code
    return f"code {code}" if code is not None else "no close frame"
