"""Paced playout of agent audio to Plivo (`playAudio` / `checkpoint` / `clearAudio`).

Why pace at all: Plivo buffers whatever we send and plays it in real time. Bursting a whole
utterance fills that buffer, so a barge-in `clearAudio` has seconds to discard and the caller
hears the bot talk over them. We therefore keep at most `max_ahead_ms` queued at
Plivo, tracked on a local clock: `play_head` is when everything sent so far will have finished
playing. A frame is sent only when it keeps `play_head - now <= max_ahead_ms`.

Messages: audio is queued and accounted for in 20 ms frames, but up to `BATCH_FRAMES` of them go
in one `playAudio` once Plivo holds more than `LOW_WATER_S`: the buffer then swings between
`max_ahead_ms` minus a message and `max_ahead_ms` instead of topping up every 20 ms, for a third of
the messages (each a JSON document and a WebSocket frame on both ends). The first frames of a
reply, and any frame while the buffer runs low, go out as soon as they fit.

This is the engine's only pacing clock: `write` pushes back once `local_buffer_ms` waits here
unsent, so a writer (speech, thinking audio) is never more than `max_ahead_ms` plus that small
local budget ahead of what the caller hears, and a hold or a clear takes effect that quickly.

Segments: `start_segment` / `write` (any rate; resampled, encoded and cut into 20 ms frames) or
`write_encoded` (bytes already in the stream's codec, e.g. TTS μ-law on a μ-law stream: cut into
20 ms frames and sent as they are) /
`end_segment` (a `checkpoint` named after the segment follows its last frame). A segment counts
as played only when Plivo echoes that checkpoint in `playedStream`. `clear()` stops feeding,
drops what is queued locally, sends `clearAudio`, and returns how much of the current segment
the caller heard (from the pacing clock, or its full length if its ack already arrived).

Background (`set_background`, `audio.mix`): a sound mixed under everything on this one clock.
While no speech is queued the feeder sends frames of it alone, at most `BED_AHEAD_MS` ahead of
what the caller hears (so the agent's next words wait behind little of it); speech frames are
decoded, mixed with the bed's next block and re-encoded as they go out, μ-law passed through
by `write_encoded` included (mixing needs the samples; without a background those bytes still go
out untouched). Bed frames belong to no segment: they never hold up a checkpoint, never count in
a segment's `played_ms`, and `is_idle`/`clear` look at speech only. A clear drops what Plivo has
buffered (bed included); the bed carries on from the next frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from app.telephony.plivo import protocol
from app.telephony.plivo.codec import StreamCodec
from pipelines.audio.frames import FRAME_MS, Framer
from pipelines.audio.g711 import ulaw_decode
from pipelines.audio.inbox import AudioFormat
from pipelines.audio.mixer import Background, LoopingSource, mix
from pipelines.audio.recorder import CallRecorder
from pipelines.audio.resample import StreamResampler

log = logging.getLogger(__name__)

FRAME_S = FRAME_MS / 1000.0
_KEEP_SEGMENTS = 256  # finished segments remembered for played_ms() lookups
# Background alone is sent this far ahead at most: enough to ride out scheduling jitter, little
# enough that speech starting in silence is barely delayed behind it.
BED_AHEAD_MS = 60
# Speech goes to Plivo up to this many 20 ms frames per `playAudio`: each message costs a JSON
# document, a WebSocket frame and a socket write on both ends, whatever audio it carries. Only
# while the far end holds more than LOW_WATER_S (so waiting for a fuller message cannot starve
# it); below that, and for the first frames of a reply, every frame goes as soon as it fits.
BATCH_FRAMES = 3
LOW_WATER_S = 0.1

Send = Callable[[str], Awaitable[None]]
Clock = Callable[[], float]


def _wake(nap: asyncio.Future[None]) -> None:
    if not nap.done():
        nap.set_result(None)


@dataclass(eq=False)
class _Segment:
    id: str
    done: asyncio.Future[None]
    framer: Framer
    resampler: StreamResampler | None = None
    carry: bytes = b""  # encoded bytes short of a whole frame (write_encoded)
    frames_queued: int = 0
    frames_sent: int = 0
    first_play_at: float | None = None  # clock time its first frame starts playing at Plivo
    sent_end: float = 0.0  # clock time its last sent frame finishes playing
    ended: bool = False
    checkpoint_sent: bool = False
    acked: bool = False
    cleared: bool = False
    heard_ms: float = 0.0  # frozen at clear()

    @property
    def sent_ms(self) -> float:
        return self.frames_sent * FRAME_MS

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


@dataclass(eq=False, slots=True)
class _Item:
    segment: _Segment
    payload: bytes | None = None  # None: the segment's checkpoint


@dataclass
class PlayoutStats:
    frames_sent: int = 0
    messages_sent: int = 0  # playAudio messages carrying those frames
    segments: int = 0
    checkpoints_acked: int = 0
    clears: int = 0
    clears_acked: int = 0
    underruns: int = 0  # Plivo's buffer ran dry in the middle of a segment
    ack_timeouts: int = 0
    max_ahead_ms_seen: float = 0.0
    background_frames: int = 0  # frames of background alone (no speech in them)
    mixed_frames: int = 0  # speech frames with the background mixed in
    acked_order: list[str] = field(default_factory=list)


class PlivoPlayout:
    """`pipelines.ports.PlayoutSink` (and `BackgroundMixingSink`) over one Plivo stream."""

    def __init__(
        self,
        send: Send,
        codec: StreamCodec,
        stream_id: str,
        *,
        max_ahead_ms: int = 200,
        local_buffer_ms: int = 60,
        ack_timeout_s: float = 5.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if max_ahead_ms < FRAME_MS:
            raise ValueError(f"max_ahead_ms must be at least one frame ({FRAME_MS} ms)")
        self._send_raw = send
        self.codec = codec
        self.stream_id = stream_id
        self.max_ahead_s = max_ahead_ms / 1000.0
        self.local_buffer_frames = max(1, local_buffer_ms // FRAME_MS)
        self.ack_timeout_s = ack_timeout_s
        self._clock = clock
        # The stream's clock starts here (a call recording aligns both sides on it).
        self.started_at = clock()
        # What the caller hears, frame by frame at its play position (call recording).
        self.recorder: CallRecorder | None = None
        self._queue: deque[_Item] = deque()
        self._segments: OrderedDict[str, _Segment] = OrderedDict()
        self._current: _Segment | None = None
        self._play_head = 0.0
        self._speech_end = 0.0  # clock time the last speech frame sent finishes playing
        self._bed: LoopingSource | None = None
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._feeder: asyncio.Task[None] | None = None
        self._napping: asyncio.Future[None] | None = None  # the feeder waiting for room
        self._closed = False
        self._auto_ids = itertools.count(1)
        self.stats = PlayoutStats()

    # --- PlayoutSink ------------------------------------------------------------------------
    async def start_segment(self, segment_id: str) -> None:
        if self._current is not None and not self._current.ended:
            await self.end_segment()
        loop = asyncio.get_running_loop()
        seg = _Segment(segment_id, loop.create_future(), Framer(self.codec.frame_samples))
        if segment_id in self._segments:
            log.warning("playout segment id %r reused; the older one is forgotten", segment_id)
            self._segments.pop(segment_id).finish()
        self._segments[segment_id] = seg
        self._current = seg
        self.stats.segments += 1
        self._forget_old()

    async def _writable(self) -> _Segment | None:
        """The segment a write goes into (opened if none is), or None to drop the write."""
        if self._closed:
            return None
        if self._current is None or self._current.ended:
            await self.start_segment(f"seg-auto-{next(self._auto_ids)}")
        seg = self._current
        assert seg is not None
        # Barge-in already cut this segment: late TTS audio is dropped.
        return None if seg.cleared else seg

    async def write(self, samples: np.ndarray, sample_rate: int) -> None:
        seg = await self._writable()
        if seg is None:
            return
        self._flush_carry(seg)
        if seg.resampler is None or seg.resampler.in_rate != sample_rate:
            if seg.resampler is not None:  # rate changed mid-segment: drain the old filter
                self._enqueue(seg, seg.resampler.flush())
            seg.resampler = StreamResampler(sample_rate, self.codec.sample_rate)
        self._enqueue(seg, seg.resampler.process(samples))
        await self._wait_for_space(seg)

    async def _wait_for_space(self, seg: _Segment) -> None:
        # Back-pressure instead of an unbounded local queue: wait for the feeder to drain.
        while (len(self._queue) > self.local_buffer_frames and not seg.cleared
               and not self._closed):
            self._space.clear()
            await self._space.wait()

    def carries(self, fmt: AudioFormat) -> bool:
        """`EncodedPlayoutSink`: bytes in `fmt` go out as they are."""
        return fmt == self.codec.audio_format

    async def write_encoded(self, payload: bytes, fmt: AudioFormat) -> None:
        if not self.carries(fmt):
            if fmt.encoding != "mulaw":
                raise ValueError(f"cannot play {fmt} on a {self.codec.content_type} stream")
            await self.write(ulaw_decode(payload), fmt.sample_rate)
            return
        seg = await self._writable()
        if seg is None:
            return
        if seg.framer.pending or (seg.resampler is not None and not seg.resampler.passthrough):
            self._drain_pcm(seg)  # PCM written before: it plays first
        data = seg.carry + payload
        size = self.codec.frame_bytes
        whole = len(data) - len(data) % size
        seg.carry = data[whole:]
        for off in range(0, whole, size):
            self._queue_frame(seg, data[off:off + size])
        await self._wait_for_space(seg)

    def _flush_carry(self, seg: _Segment) -> None:
        """Encoded bytes short of a frame: pad with silence and queue them."""
        if seg.carry:
            pad = self.codec.frame_bytes - len(seg.carry)
            self._queue_frame(seg, seg.carry + bytes([self.codec.silence_byte]) * pad)
            seg.carry = b""

    def _drain_pcm(self, seg: _Segment) -> None:
        if seg.resampler is not None:
            self._enqueue(seg, seg.resampler.flush())
        tail = seg.framer.flush()
        if tail is not None:
            self._queue_frame(seg, self.codec.encode(tail))

    async def end_segment(self) -> None:
        seg = self._current
        if seg is None or seg.ended:
            return
        self._current = None
        seg.ended = True
        if seg.cleared:
            return
        self._drain_pcm(seg)
        self._flush_carry(seg)
        if seg.frames_queued == 0:
            seg.acked = True  # nothing to play: trivially "played"
            seg.finish()
            return
        self._queue.append(_Item(seg))
        self._wake.set()

    async def wait_played(self, segment_id: str) -> None:
        seg = self._segments.get(segment_id)
        if seg is None:
            return
        while not seg.done.done():
            try:
                await asyncio.wait_for(asyncio.shield(seg.done), 0.25)
            except TimeoutError:
                if (seg.checkpoint_sent
                        and self._clock() > seg.sent_end + self.ack_timeout_s):
                    self.stats.ack_timeouts += 1
                    log.warning("no playedStream for segment %r %.1f s after it should have "
                                "finished playing; treating it as done", seg.id,
                                self.ack_timeout_s)
                    seg.finish()

    def played_ms(self, segment_id: str) -> float:
        seg = self._segments.get(segment_id)
        if seg is None:
            return 0.0
        if seg.acked:
            return seg.sent_ms
        if seg.cleared:
            return seg.heard_ms
        return self._heard_by_clock(seg, self._clock())

    async def clear(self) -> float:
        now = self._clock()
        live = [s for s in self._segments.values() if not s.acked and not s.cleared]
        pending_audio = bool(self._queue) or self._speech_end > now
        current = self._heard_segment(live, now)
        heard = 0.0
        self._queue.clear()
        for seg in live:
            seg.heard_ms = self._heard_by_clock(seg, now)
            seg.cleared = True
            if seg.resampler is not None:
                seg.resampler.reset()
            seg.framer.reset()
            seg.carry = b""
            seg.finish()
            if seg is current:
                heard = seg.heard_ms
        self._space.set()
        if not pending_audio and not live:
            return 0.0
        self._play_head = now  # Plivo empties its buffer on clearAudio
        if self._napping is not None:
            _wake(self._napping)
        if self.recorder is not None:
            self.recorder.cut(now)  # what Plivo drops was never heard
        self._speech_end = min(self._speech_end, now)
        self.stats.clears += 1
        await self._send(protocol.clear_audio(self.stream_id))
        return heard

    def is_idle(self) -> bool:
        cur = self._current
        open_seg = cur is not None and not cur.ended and not cur.cleared
        return not self._queue and not open_seg and self._clock() >= self._speech_end

    async def send_dtmf(self, digits: str) -> None:
        await self._send(protocol.send_dtmf(digits))

    # --- BackgroundMixingSink -----------------------------------------------------------------
    def set_background(self, background: Background | None) -> None:
        """Mix `background` under the call from the next frame on (None: stop it)."""
        self._bed = background.source(self.codec.sample_rate) if background else None
        if self._bed is not None and not self._closed:
            self._wake.set()
            self.start()

    @property
    def background_active(self) -> bool:
        return self._bed is not None and not self._bed.exhausted

    # --- acks from the stream reader ------------------------------------------------------------
    def on_played(self, name: str) -> None:
        seg = self._segments.get(name)
        if seg is None:
            log.info("playedStream for unknown checkpoint %r ignored", name)
            return
        if seg.acked:
            return
        seg.acked = True
        self.stats.checkpoints_acked += 1
        self.stats.acked_order.append(name)
        seg.finish()

    def on_cleared(self) -> None:
        self.stats.clears_acked += 1

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        if self._feeder is None:
            self._feeder = asyncio.create_task(self._feed(), name=f"playout-{self.stream_id}")

    async def close(self) -> None:
        """Stream ended: stop feeding and release anyone waiting on a segment."""
        self._closed = True
        self._queue.clear()
        self._wake.set()
        self._space.set()
        if self._feeder is not None:
            self._feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feeder
        for seg in self._segments.values():
            seg.finish()

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def queued_ahead_ms(self) -> float:
        """What our clock says is still buffered at Plivo right now."""
        return max(0.0, self._play_head - self._clock()) * 1000.0

    # --- internals ----------------------------------------------------------------------------
    def _heard_by_clock(self, seg: _Segment, now: float) -> float:
        if seg.first_play_at is None:
            return 0.0
        return min(max(0.0, (now - seg.first_play_at) * 1000.0), seg.sent_ms)

    @staticmethod
    def _heard_segment(live: list[_Segment], now: float) -> _Segment | None:
        """The segment whose audio is (or was last) playing at `now`, else the oldest pending."""
        started = [s for s in live if s.first_play_at is not None and s.first_play_at <= now]
        if started:
            return max(started, key=lambda s: s.first_play_at or 0.0)
        return live[0] if live else None

    def _enqueue(self, seg: _Segment, samples: np.ndarray) -> None:
        if not len(samples):
            return
        for frame in seg.framer.push(samples):
            self._queue_frame(seg, self.codec.encode(frame))

    def _queue_frame(self, seg: _Segment, payload: bytes) -> None:
        self._queue.append(_Item(seg, payload))
        seg.frames_queued += 1
        self._wake.set()
        self.start()

    async def _send(self, message: str) -> None:
        # One lock for every outgoing message keeps order deterministic: a frame already being
        # written goes out before a clearAudio, never after it.
        async with self._send_lock:
            await self._send_raw(message)

    def _forget_old(self) -> None:
        while len(self._segments) > _KEEP_SEGMENTS:
            sid, seg = next(iter(self._segments.items()))
            if not (seg.acked or seg.cleared or seg.done.done()):
                break
            del self._segments[sid]

    async def _feed(self) -> None:
        try:
            while not self._closed:
                if not self._queue:
                    if self.background_active:
                        await self._feed_background()
                        continue
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                item = self._queue[0]
                seg = item.segment
                if item.payload is None:
                    self._queue.popleft()
                    await self._send(protocol.checkpoint(self.stream_id, seg.id))
                    seg.checkpoint_sent = True
                    continue
                now = self._clock()
                ahead = max(0.0, self._play_head - now)
                ready = self._ready_frames(seg)
                # Frames go out together: once the far end holds enough to ride out a wait,
                # wait until all that is ready fits rather than sending each as it fits.
                want = ready if ahead > LOW_WATER_S else 1
                wait = ahead + want * FRAME_S - self.max_ahead_s
                if wait > 1e-4:
                    await self._nap(wait)
                    continue
                fits = int((self.max_ahead_s - ahead) / FRAME_S + 1e-6)
                await self._send_frames(seg, min(ready, max(1, fits)), now)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A closed socket ends the call elsewhere (the stream reader sees it); playout
            # just stops.
            log.info("stream %s: playout stopped, send failed (%s)", self.stream_id,
                     type(exc).__name__)
            self._closed = True
            for seg in self._segments.values():
                seg.finish()

    async def _nap(self, seconds: float) -> None:
        """Sleep until the next frames fit, or until a clear() empties the far end's buffer
        (then speech written after it, e.g. a ducked resume, goes out at once)."""
        loop = asyncio.get_running_loop()
        nap = self._napping = loop.create_future()
        timer = loop.call_later(seconds, _wake, nap)
        try:
            await nap
        finally:
            timer.cancel()
            self._napping = None

    def _ready_frames(self, seg: _Segment) -> int:
        """Audio frames of `seg` at the head of the queue, up to one message's worth."""
        n = 0
        for item in itertools.islice(self._queue, BATCH_FRAMES):
            if item.segment is not seg or item.payload is None:
                break
            n += 1
        return n

    async def _send_frames(self, seg: _Segment, n: int, now: float) -> None:
        """The next `n` frames of `seg` in one `playAudio`."""
        if self._play_head < now:
            if seg.frames_sent > 0:
                self.stats.underruns += 1
            self._play_head = now
        if seg.first_play_at is None:
            seg.first_play_at = self._play_head
        payloads: list[bytes] = []
        bed = self._bed
        for _ in range(n):
            payload = self._queue.popleft().payload
            assert payload is not None
            heard: np.ndarray | None = None  # the frame as PCM, once it had to be decoded
            if bed is not None and not bed.exhausted:
                heard = mix(self.codec.decode(payload), bed.read(self.codec.frame_samples))
                payload = self.codec.encode(heard)
                self.stats.mixed_frames += 1
            if self.recorder is not None:
                self.recorder.agent(heard if heard is not None else self.codec.decode(payload),
                                    self._play_head)
            payloads.append(payload)
            self._play_head += FRAME_S
        seg.frames_sent += n
        seg.sent_end = self._speech_end = self._play_head
        self.stats.frames_sent += n
        self.stats.messages_sent += 1
        self.stats.max_ahead_ms_seen = max(self.stats.max_ahead_ms_seen,
                                           (self._play_head - now) * 1000.0)
        self._space.set()
        await self._send(protocol.play_audio(b"".join(payloads), self.codec.encoding,
                                             self.codec.sample_rate))

    async def _feed_background(self) -> None:
        """One frame of background alone once it is due; returns early when speech or a new
        background arrives, so that the feeder looks again."""
        bed = self._bed
        assert bed is not None
        now = self._clock()
        wait = max(0.0, self._play_head - now) + FRAME_S - BED_AHEAD_MS / 1000.0
        if wait > 1e-4:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            return
        if self._play_head < now:
            self._play_head = now
        self._play_head += FRAME_S
        self.stats.background_frames += 1
        samples = bed.read(self.codec.frame_samples)
        frame = self.codec.encode(samples)
        if self.recorder is not None:
            self.recorder.agent(samples, self._play_head - FRAME_S)
        await self._send(protocol.play_audio(frame, self.codec.encoding, self.codec.sample_rate))
