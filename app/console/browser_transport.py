"""A browser microphone seen as a carrier-neutral `app.calls.transport.CallTransport`.

The playground socket speaks a small subset of Plivo's bidirectional stream protocol, so a
browser call runs through exactly the engine path of a phone call, including the paced playout:

- up, binary frames: the caller's audio as 16 kHz mono little-endian PCM16 (any length);
- up, JSON text: `playedStream {name}` once the browser has played up to a checkpoint,
  `clearedAudio` after it dropped its buffer, `dtmf {dtmf: {digit}}`, `stop`;
- down, JSON text: `playAudio` (base64 L16 16 kHz), `checkpoint {name}`, `clearAudio`, from the
  same `PlivoPlayout` a phone call uses; plus the console's own messages (see playground.py).

Caller audio goes into the call's one bounded `AudioInbox`, as for a phone stream: if the
engine falls behind by more than a few seconds the oldest audio is dropped and counted there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from app.calls.transport import DtmfEvent, TransportStats
from app.telephony.plivo.codec import L16, FrameDecoder, StreamCodec
from app.telephony.plivo.playout import PlivoPlayout
from pipelines.audio.inbox import AudioFormat, AudioInbox

DTMF_QUEUE_MAX = 64
BROWSER_CODEC = StreamCodec(L16, 16000)

_END = object()


class BrowserTransportError(ValueError):
    """Something a browser call cannot do (e.g. be transferred to a phone number)."""


class BrowserTransport:
    def __init__(
        self,
        *,
        session_id: str,
        call_uuid: str,
        playout: PlivoPlayout,
        close: Callable[[str], Awaitable[None]],
    ) -> None:
        self.session_id = session_id
        self.call_uuid = call_uuid
        self.stream_id = call_uuid
        self.codec = BROWSER_CODEC.content_type
        self.playout = playout
        self._close = close
        self.inbox = AudioInbox(name=f"session {session_id}")
        self._decoder = FrameDecoder(BROWSER_CODEC)
        self._dtmf: asyncio.Queue[object] = asyncio.Queue(DTMF_QUEUE_MAX + 1)
        self._closed = False
        self._end_reason: str | None = None
        self._hangup_reason: str | None = None
        self.stats = TransportStats()

    # --- CallTransport ------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def hangup_requested(self) -> bool:
        return self._hangup_reason is not None

    @property
    def end_reason(self) -> str | None:
        if not self._closed:
            return None
        return self._hangup_reason or self._end_reason

    @property
    def audio_format(self) -> AudioFormat:
        return BROWSER_CODEC.audio_format

    async def dtmf(self) -> AsyncIterator[DtmfEvent]:
        while True:
            item = await self._dtmf.get()
            if item is _END:
                self._dtmf.put_nowait(_END)
                return
            yield item  # type: ignore[misc]

    async def hangup(self, reason: str) -> None:
        """The agent (or the API) ends the call: tell the browser and close the socket."""
        if self._hangup_reason is None:
            self._hangup_reason = reason
        if not self._closed:
            await self._close(reason)

    async def transfer(self, target: str, mode: str = "cold", brief: str = "") -> None:
        raise BrowserTransportError("a playground call has no phone line to transfer")

    # --- fed by the playground socket ---------------------------------------------------------
    def push_pcm16(self, data: bytes) -> None:
        if self._closed or not data:
            return
        for frame in self._decoder.push(data):
            self.inbox.put(frame)

    def push_dtmf(self, digit: str) -> None:
        if self._closed:
            return
        if self._dtmf.qsize() >= DTMF_QUEUE_MAX:
            self._dtmf.get_nowait()
        self._dtmf.put_nowait(DtmfEvent(digit, time.monotonic()))

    def finish(self, reason: str) -> None:
        """The socket is over: end both iterators."""
        if self._closed:
            return
        self._closed = True
        self._end_reason = reason
        self.inbox.close()
        if self._dtmf.full():
            self._dtmf.get_nowait()
        self._dtmf.put_nowait(_END)
