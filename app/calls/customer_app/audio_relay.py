"""Audio mode: the customer app in place of the engine, in Plivo's own stream vocabulary.

The caller's audio goes to the app as `media` messages (20 ms each, in the call's format: the
carrier's μ-law bytes as they came, or 16-bit PCM); keypresses as `dtmf`. The app's `playAudio`
is played to the caller, `checkpoint` is answered with `playedStream` once everything before it
was heard, and `clearAudio` drops what is queued and is answered with `clearedAudio`. The
agent's own voice (`speak`, the apology when the app is lost) and played WAVs go into the same
ordered queue as the app's audio.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.calls.customer_app.commands import Checkpoint, PlayAudio
from app.calls.transport import CallTransport
from pipelines import events as ev
from pipelines.audio.g711 import ulaw_decode
from pipelines.audio.inbox import AudioFormat
from pipelines.audio.wav import pcm16_from_bytes, pcm16_to_bytes
from pipelines.outcomes import EndReason
from pipelines.ports import EncodedPlayoutSink, TTSLike

log = logging.getLogger(__name__)

MAX_PENDING = 3000  # queued items (60 s of 20 ms frames): an app far ahead loses the oldest

_ids = itertools.count(1)


@dataclass(slots=True)
class _Pcm:
    samples: np.ndarray
    rate: int
    new_segment: bool = False  # speech and played clips start their own segment


@dataclass(slots=True)
class _Speak:
    text: str


@dataclass(slots=True)
class _Done:
    """Resolves `future` once everything queued before it was played (True) or cleared
    (False)."""

    future: asyncio.Future[bool]


_Item = PlayAudio | Checkpoint | _Pcm | _Speak | _Done


class AudioRelay:
    """One audio-mode call: the host drives it like the engine (start, stop, wait_ended)."""

    def __init__(self, transport: CallTransport, *, send: Callable[[dict[str, Any]], None],
                 emit: ev.EventCallback, tts: TTSLike | None, voice: str | None,
                 max_duration_s: float | None = None, max_duration_goodbye: str = "") -> None:
        self._transport = transport
        self._sink = transport.playout
        self._send = send
        self._emit = emit
        self._tts = tts
        self._voice = voice
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._segment: str | None = None
        self._checkpoints: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[Any]] = []
        self._ended: asyncio.Future[str] | None = None
        self._ending = False
        self._hanging_up: asyncio.Task[None] | None = None
        self._max_duration_s = max_duration_s
        self._max_duration_goodbye = max_duration_goodbye
        self.media_sent = 0

    # -- the engine's face towards the host -----------------------------------------------------
    async def start(self) -> None:
        self._ended = asyncio.get_running_loop().create_future()
        self.send_start()
        self._tasks = [asyncio.create_task(self._relay_caller(), name="app-media-out"),
                       asyncio.create_task(self._play(), name="app-media-in")]
        if self._max_duration_s is not None:
            # The engine's hard limit holds here too: an app that never hangs up cannot keep
            # a line open for ever.
            self._tasks.append(asyncio.create_task(self._time_limit(self._max_duration_s),
                                                   name="app-max-duration"))

    def send_start(self) -> None:
        """Plivo's `start` message (again after a reconnect)."""
        fmt = self._transport.audio_format
        self._send({"event": "start", "sequenceNumber": 0, "start": {
            "streamId": self._transport.stream_id, "callId": self._transport.call_uuid,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": _content_type(fmt), "sampleRate": fmt.sample_rate}}})

    async def wait_ended(self) -> str:
        assert self._ended is not None, "not started"
        return await asyncio.shield(self._ended)

    @property
    def ended(self) -> bool:
        return self._ended is not None and self._ended.done()

    async def stop(self, reason: str = EndReason.STOPPED) -> None:
        if self._ended is None or self._ended.done():
            return
        self._send({"event": "stop"})
        for t in (*self._tasks, *self._checkpoints):
            t.cancel()
        for t in (*self._tasks, *self._checkpoints):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if not self._ended.done():
            self._ended.set_result(reason)

    def on_dtmf(self, digit: str) -> None:
        self._emit(ev.UserDtmf(digit=digit))
        self._send({"event": "dtmf", "dtmf": {"digit": digit}})

    def say(self, text: str, *, interruptible: bool = True) -> Awaitable[bool]:
        """Speak with the agent's voice after what is queued; resolves once played."""
        if self._tts is None:
            raise RuntimeError("this agent has no voice to speak with")
        self._put(_Speak(text))
        return self._done_marker()

    def play_pcm(self, samples: np.ndarray, rate: int) -> Awaitable[bool]:
        self._put(_Pcm(samples, rate, new_segment=True))
        return self._done_marker()

    def hangup(self, reason: str = EndReason.AGENT_HANGUP, *, goodbye: str | None = None,
               interrupt: bool = False) -> None:
        if self._ending or self._ended is None or self._ended.done():
            return
        self._ending = True
        self._hanging_up = asyncio.get_running_loop().create_task(
            self._hang_up(reason, goodbye, interrupt), name="app-hangup")

    async def _hang_up(self, reason: str, goodbye: str | None, interrupt: bool) -> None:
        if interrupt:
            await self.clear(notify=False)
        if goodbye and self._tts is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.say(goodbye), 30)
        await self.stop(reason)

    async def _time_limit(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.hangup(EndReason.MAX_DURATION, goodbye=self._max_duration_goodbye or None,
                    interrupt=True)

    # -- the app's audio commands ---------------------------------------------------------------
    def on_audio(self, cmd: PlayAudio | Checkpoint) -> None:
        self._put(cmd)

    async def clear(self, *, notify: bool = True) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, _Done) and not item.future.done():
                item.future.set_result(False)
        for t in self._checkpoints:
            t.cancel()
        self._checkpoints.clear()
        self._segment = None
        with contextlib.suppress(Exception):
            await self._sink.clear()
        if notify:
            self._send({"event": "clearedAudio", "streamId": self._transport.stream_id})

    # -- inside ---------------------------------------------------------------------------------
    def _put(self, item: _Item) -> None:
        if self._queue.qsize() >= MAX_PENDING:
            log.warning("audio-mode app is more than %d items ahead; dropping the oldest",
                        MAX_PENDING)
            self._queue.get_nowait()
        self._queue.put_nowait(item)

    def _done_marker(self) -> Awaitable[bool]:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._put(_Done(fut))
        return fut

    async def _relay_caller(self) -> None:
        fmt = self._transport.audio_format
        t0 = time.monotonic()
        async for frame in self._transport.inbox:
            payload = frame.mulaw if frame.mulaw is not None else pcm16_to_bytes(frame.pcm)
            self.media_sent += 1
            self._send({"event": "media", "sequenceNumber": self.media_sent, "media": {
                "track": "inbound", "chunk": self.media_sent,
                "timestamp": str(int((time.monotonic() - t0) * 1000)),
                "contentType": _content_type(fmt), "sampleRate": fmt.sample_rate,
                "payload": base64.b64encode(payload).decode()}})

    async def _play(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._play_one(item)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("audio mode: playing an item failed")

    async def _open(self, fresh: bool = False) -> None:
        if fresh and self._segment is not None:
            await self._close()
        if self._segment is None:
            self._segment = f"app-{next(_ids)}"
            await self._sink.start_segment(self._segment)

    async def _close(self) -> str | None:
        seg, self._segment = self._segment, None
        if seg is not None:
            await self._sink.end_segment()
        return seg

    async def _play_one(self, item: _Item) -> None:
        if isinstance(item, PlayAudio):
            await self._open()
            fmt = AudioFormat(item.sample_rate, "mulaw" if item.content_type == "audio/x-mulaw"
                              else "pcm16")
            if isinstance(self._sink, EncodedPlayoutSink) and self._sink.carries(fmt):
                await self._sink.write_encoded(item.payload, fmt)
            elif fmt.encoding == "mulaw":
                await self._sink.write(ulaw_decode(item.payload), fmt.sample_rate)
            else:
                await self._sink.write(pcm16_from_bytes(item.payload[: len(item.payload) // 2 * 2]),
                                       fmt.sample_rate)
        elif isinstance(item, Checkpoint):
            seg = await self._close()
            task = asyncio.create_task(self._ack(seg, item.name))
            self._checkpoints.add(task)
            task.add_done_callback(self._checkpoints.discard)
        elif isinstance(item, _Pcm):
            await self._open(fresh=item.new_segment)
            await self._sink.write(item.samples, item.rate)
            await self._close()
        elif isinstance(item, _Speak):
            assert self._tts is not None
            await self._open(fresh=True)
            async for chunk in self._tts.synthesize(item.text, self._voice):
                await self._sink.write(chunk.samples, chunk.sample_rate)
            await self._close()
        else:
            seg = await self._close()
            if seg is not None:
                await self._sink.wait_played(seg)
            if not item.future.done():
                item.future.set_result(True)

    async def _ack(self, segment: str | None, name: str) -> None:
        if segment is not None:
            await self._sink.wait_played(segment)
        self._send({"event": "playedStream", "streamId": self._transport.stream_id,
                    "name": name})


def _content_type(fmt: AudioFormat) -> str:
    return "audio/x-mulaw" if fmt.encoding == "mulaw" else "audio/x-l16"
