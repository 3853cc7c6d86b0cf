"""What every socket-fed call leg shares: caller audio into the call's one `AudioInbox`,
keypresses into a bounded queue, and the end of the leg.

A Plivo stream (app.telephony.plivo.transport) and a browser playground call
(app.console.browser_transport) differ only in how they hang up and transfer, and in what
their socket delivers; both feed this with audio in their own `StreamCodec`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np

from app.calls.transport import DtmfEvent, TransportStats
from app.telephony.plivo.codec import FrameDecoder, StreamCodec
from app.telephony.plivo.playout import PlivoPlayout
from pipelines.audio.inbox import AudioFormat, AudioInbox
from pipelines.audio.recorder import CallRecorder

DTMF_QUEUE_MAX = 64


class _End:
    """Queued after a leg's last keypress: readers stop at it."""


_END = _End()


class SocketLeg:
    """The carrier-neutral half of a `CallTransport`; subclasses add hangup and transfer."""

    def __init__(self, *, session_id: str, call_uuid: str, stream_id: str, codec: StreamCodec,
                 playout: PlivoPlayout) -> None:
        self.session_id = session_id
        self.call_uuid = call_uuid
        self.stream_id = stream_id
        self.stream_codec = codec
        self.codec = codec.content_type
        self.playout = playout
        self.inbox = AudioInbox(name=f"session {session_id}")
        self._decoder = FrameDecoder(codec)
        self._dtmf: asyncio.Queue[DtmfEvent | _End] = asyncio.Queue(DTMF_QUEUE_MAX + 1)
        self._closed = False
        self._end_reason: str | None = None
        self._hangup_reason: str | None = None
        self.stats = TransportStats()
        self._frames_decoded = 0  # caller frames since the stream started
        self.recorder: CallRecorder | None = None

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

    def _mark_hangup(self, reason: str) -> None:
        if self._hangup_reason is None:
            self._hangup_reason = reason

    # --- fed by the socket handler ----------------------------------------------------------
    def push_audio(self, data: bytes) -> None:
        """Caller audio in the leg's codec, any length: cut into 20 ms frames for the engine."""
        if self._closed or not data:
            return
        for frame in self._decoder.push(data):
            self.inbox.put(frame)
            self._frames_decoded += 1
            if self.recorder is not None:
                self.recorder.caller(frame.pcm)

    def start_recording(self, path: str, channels: int) -> CallRecorder:
        """Record the call into a WAV file at `path` from now on, on the stream's clock: the
        caller's frames by stream position (those before now are silence), the agent's by their
        play position at the carrier, less what a clear dropped. `CallRecorder.finish` ends it."""
        rec = CallRecorder(path, sample_rate=self.stream_codec.sample_rate, channels=channels,
                           t0=self.playout.started_at, clock=self.playout.clock)
        if self._frames_decoded:
            rec.caller(np.zeros(self._frames_decoded * self.stream_codec.frame_samples,
                                np.int16))
        self.recorder = rec
        self.playout.recorder = rec
        return rec

    def push_dtmf(self, digit: str) -> None:
        if self._closed:
            return
        if self._dtmf.qsize() >= DTMF_QUEUE_MAX:
            self._dtmf.get_nowait()
        self._dtmf.put_nowait(DtmfEvent(digit, time.monotonic()))

    def finish(self, reason: str) -> None:
        """The socket is over: end the audio and the keypresses."""
        if self._closed:
            return
        self._closed = True
        self._end_reason = reason
        self.inbox.close()
        if self._dtmf.full():
            self._dtmf.get_nowait()
        self._dtmf.put_nowait(_END)
