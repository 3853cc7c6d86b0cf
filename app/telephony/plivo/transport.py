"""A live Plivo stream seen as a carrier-neutral `app.calls.transport.CallTransport`.

The stream handler pushes media payloads and keypresses in. Caller audio is cut into 20 ms
frames and decoded at the stream's own rate (μ-law bytes kept alongside), and lands in the
call's one bounded `AudioInbox`, which the engine reads: if it falls behind by more than a few
seconds the oldest audio is dropped and counted there, once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from app.calls.transport import DtmfEvent, TransportStats
from app.telephony.plivo.codec import FrameDecoder, StreamCodec
from app.telephony.plivo.playout import PlivoPlayout
from app.telephony.plivo.rest import PlivoNotConfigured, PlivoRestClient
from pipelines.audio.inbox import AudioFormat, AudioInbox

log = logging.getLogger(__name__)

DTMF_QUEUE_MAX = 64


class _End:
    """Queued after a stream's last item: readers stop at it."""


_END = _End()


class PlivoTransport:
    def __init__(
        self,
        *,
        session_id: str,
        call_uuid: str,
        stream_id: str,
        codec: StreamCodec,
        playout: PlivoPlayout,
        rest: PlivoRestClient | None,
        request_transfer: Callable[[str, str, str], Awaitable[object]],
        close_stream: Callable[[], Awaitable[None]],
    ) -> None:
        self.session_id = session_id
        self.call_uuid = call_uuid
        self.stream_id = stream_id
        self.stream_codec = codec
        self.codec = codec.content_type
        self.playout = playout
        self._rest = rest
        self._request_transfer = request_transfer
        self._close_stream = close_stream
        self.inbox = AudioInbox(name=f"session {session_id}")
        self._decoder = FrameDecoder(codec)
        self._dtmf: asyncio.Queue[DtmfEvent | _End] = asyncio.Queue(DTMF_QUEUE_MAX + 1)
        self._closed = False
        self._end_reason: str | None = None
        self._hangup_reason: str | None = None
        self.transferred_to: str | None = None
        self.stats = TransportStats()

    # --- CallTransport ------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def hangup_requested(self) -> bool:
        """A hangup or transfer was asked for (the call is ending on our initiative)."""
        return self._hangup_reason is not None

    @property
    def end_reason(self) -> str | None:
        if not self._closed:
            return None
        return self._hangup_reason or self._end_reason

    @property
    def audio_format(self) -> AudioFormat:
        return self.stream_codec.audio_format

    async def dtmf(self) -> AsyncIterator[DtmfEvent]:
        while True:
            item = await self._dtmf.get()
            if isinstance(item, _End):
                self._dtmf.put_nowait(_END)
                return
            yield item

    async def hangup(self, reason: str) -> None:
        """Hang up through the REST API; without credentials, end the stream instead."""
        if self._hangup_reason is None:
            self._hangup_reason = reason
        if self._closed:
            return
        if self._rest is not None and self._rest.configured:
            await self._rest.hangup(self.call_uuid)
            return
        log.warning("session %s: Plivo REST not configured; closing the stream to end the call "
                    "(Plivo ends it with 'End Of XML Instructions')", self.session_id)
        await self._close_stream()

    async def transfer(self, target: str, mode: str = "cold", brief: str = "") -> None:
        """Store the target, have Plivo fetch our `<Dial>` XML, then end the stream (the new
        XML runs only once the stream is gone)."""
        if self._rest is None or not self._rest.configured:
            raise PlivoNotConfigured("transfer needs the Plivo REST API "
                                     "(set plivo.auth_id and plivo.auth_token)")
        await self._request_transfer(target, mode, brief)
        self.transferred_to = target
        if self._hangup_reason is None:
            self._hangup_reason = "transferred"
        # The transfer XML is "subsequent XML": Plivo runs it once our stream ends.
        await self._close_stream()

    # --- fed by the stream handler ----------------------------------------------------------
    def push_media(self, payload: bytes) -> None:
        """A `media` payload in the stream's codec."""
        if self._closed:
            return
        for frame in self._decoder.push(payload):
            self.inbox.put(frame)

    def push_dtmf(self, digit: str) -> None:
        if self._closed:
            return
        if self._dtmf.qsize() >= DTMF_QUEUE_MAX:
            self._dtmf.get_nowait()
        self._dtmf.put_nowait(DtmfEvent(digit, time.monotonic()))

    def finish(self, reason: str) -> None:
        """The stream is over: end both iterators."""
        if self._closed:
            return
        self._closed = True
        self._end_reason = reason
        self.inbox.close()
        if self._dtmf.full():
            self._dtmf.get_nowait()
        self._dtmf.put_nowait(_END)
