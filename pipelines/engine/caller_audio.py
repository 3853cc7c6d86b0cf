"""Caller audio in: frames come from the call's one `AudioInbox` as the carrier delivered them
(e.g. 8 kHz with the μ-law bytes) and each consumer converts only what it needs, with its own
stream state:

- VAD, end of turn, voicemail screening: 16 kHz int16 in 320-sample frames (resampled and
  re-framed; a 16 kHz leg passes through untouched). These frames also fill the ring buffer the
  end-of-turn model looks at.
- STT: an STT implementing `FormatChoosingSTT` names its format from the carrier's (Deepgram
  takes a μ-law leg's bytes as they came); any other STT gets 16 kHz PCM.

The STT sits behind its own bounded queue so a slow connection never blocks the VAD, and
`push` only enqueues, so providers never block the transport. Transcripts come back here; a
broken STT stream is reported and reopened. Caller frames lost because the engine fell behind
are counted once, on the inbox."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

import numpy as np

from pipelines import events as ev
from pipelines.audio.frames import FRAME_SAMPLES, SAMPLE_RATE, Framer, as_int16
from pipelines.audio.g711 import ulaw_encode
from pipelines.audio.inbox import AudioFormat, AudioInbox, CallerFrame
from pipelines.audio.resample import StreamResampler
from pipelines.audio.ringbuffer import RingBuffer
from pipelines.engine.core import EngineCore
from pipelines.outcomes import ErrorStage
from pipelines.ports import (
    FormatChoosingSTT,
    PauseFinalizingStream,
    STTLike,
    STTStreamLike,
    TranscriptLike,
)
from pipelines.vad.base import VadEvent, VadStream

log = logging.getLogger("pipelines.conversation")

TURN_AUDIO_MS = 8000  # what the end-of-turn model looks at
PREROLL_MS = 300  # audio kept before the first speech onset of a turn
INPUT_BACKLOG_FRAMES = 100  # 2 s: beyond this the engine is overloaded and drops the oldest
CATCH_UP_FRAMES = 4  # 80 ms of caller audio waiting: the VAD gets it all in one round trip
STT_BACKLOG_FRAMES = 150  # 3 s of audio waiting for a slow STT connection
# While the VAD hears no speech, caller audio goes to the STT 100 ms at a time: a fifth of the
# messages (for a cloud STT each is a websocket frame with its own random mask), and nothing
# to recognise is late. Once the last VAD window sounds like speech every frame goes at once,
# with what was held, so the words come no later; a flush sends what is held too.
STT_SILENCE_CHUNK_FRAMES = 5
STT_MAX_FAILURES = 3

ENGINE_FORMAT = AudioFormat(SAMPLE_RATE, "pcm16")  # what the VAD and end of turn take


def stt_format(stt: STTLike, carrier: AudioFormat) -> AudioFormat:
    """The format the STT is fed on a leg in `carrier` format."""
    if isinstance(stt, FormatChoosingSTT):
        return stt.input_format(carrier)
    return ENGINE_FORMAT


async def open_stt(stt: STTLike, fmt: AudioFormat, language: str) -> STTStreamLike:
    if isinstance(stt, FormatChoosingSTT):
        return await stt.open_as(fmt, language)
    return await stt.open(fmt.sample_rate, language)


class ConsumerFormats:
    """Turns one call's carrier frames into what the VAD and the STT consume, each with its own
    resampler state."""

    def __init__(self, stt: AudioFormat) -> None:
        self.stt = stt
        self._vad_rs: StreamResampler | None = None
        self._vad_framer = Framer(FRAME_SAMPLES)
        self._stt_rs: StreamResampler | None = None

    def for_vad(self, frame: CallerFrame) -> list[np.ndarray]:
        """16 kHz frames of 320 samples (none while a resampler's filter fills)."""
        if frame.rate == SAMPLE_RATE and len(frame.pcm) == FRAME_SAMPLES \
                and not self._vad_framer.pending:
            return [frame.pcm]
        rs = self._vad_rs
        if rs is None or rs.in_rate != frame.rate:
            rs = self._vad_rs = StreamResampler(frame.rate, SAMPLE_RATE)
        return self._vad_framer.push(rs.process(frame.pcm))

    def for_stt(self, frame: CallerFrame) -> np.ndarray:
        """The frame in the STT's format: int16 PCM, or μ-law bytes as uint8 (the carrier's
        own when it sent μ-law at that rate)."""
        fmt = self.stt
        if fmt.encoding == "mulaw" and frame.mulaw is not None and frame.rate == fmt.sample_rate:
            return np.frombuffer(frame.mulaw, dtype=np.uint8)
        pcm = frame.pcm
        if frame.rate != fmt.sample_rate:
            rs = self._stt_rs
            if rs is None or rs.in_rate != frame.rate:
                rs = self._stt_rs = StreamResampler(frame.rate, fmt.sample_rate)
            pcm = rs.process(pcm)
        if fmt.encoding == "mulaw":
            return np.frombuffer(ulaw_encode(pcm), dtype=np.uint8)
        return pcm


class _Flush:
    """STT queue marker: finalise what was pushed so far."""


FLUSH = _Flush()
SttItem = np.ndarray | _Flush


class CallerAudio:
    def __init__(self, core: EngineCore, *, vad: VadStream, stt: STTLike, language: str,
                 inbox: AudioInbox | None = None, caller_format: AudioFormat = ENGINE_FORMAT,
                 on_caller_audio: Callable[[np.ndarray], None] | None = None) -> None:
        self._core = core
        self.vad = vad
        self._stt = stt
        self._language = language
        # The call's one queue of caller audio (the transport's, or our own for push_audio).
        self.inbox = inbox if inbox is not None else AudioInbox(INPUT_BACKLOG_FRAMES,
                                                                core.session_id)
        self.stt_format = stt_format(stt, caller_format)
        self._formats = ConsumerFormats(self.stt_format)
        # Sees every 16 kHz frame the VAD does (the host's voicemail screen).
        self._on_caller_audio = on_caller_audio
        # Frames and flush requests share one queue so a flush covers every frame before it.
        self._stt_q: deque[SttItem] = deque(maxlen=STT_BACKLOG_FRAMES)
        self._stt_held = 0  # frames queued since the feeder was last woken
        self._stt_ready = asyncio.Event()
        self.stt_stream: STTStreamLike | None = None
        self._ring = RingBuffer(SAMPLE_RATE * (TURN_AUDIO_MS + PREROLL_MS) // 1000)
        self.stream_ms = 0.0  # caller audio processed so far
        self._vad_failed = False
        # STT errors so far (a turn with no words after one is a lost turn, not silence).
        self.stt_errors = 0

    @property
    def dropped_frames(self) -> int:
        """Caller frames lost because the engine fell behind (the inbox's one counter)."""
        return self.inbox.dropped

    async def open(self) -> None:
        self.stt_stream = await open_stt(self._stt, self.stt_format, self._language)

    def start(self) -> None:
        core = self._core
        core.core_tasks.add(core.spawn(self._audio_loop(), "audio"))
        core.core_tasks.add(core.spawn(self._stt_feed_loop(), "stt-feed"))
        core.core_tasks.add(core.spawn(self._transcript_loop(), "stt-events"))

    def push(self, frame: np.ndarray | CallerFrame) -> None:
        if not isinstance(frame, CallerFrame):
            frame = CallerFrame(as_int16(frame), SAMPLE_RATE)
        self.inbox.put(frame)

    @property
    def stt_finalizes_at_pauses(self) -> bool:
        stream = self.stt_stream
        return isinstance(stream, PauseFinalizingStream) and stream.finalizes_at_pauses

    def flush_stt(self) -> None:
        """Ask the STT for a final transcript of everything pushed so far."""
        self._queue_stt(FLUSH)

    def turn_audio(self, turn_start_ms: float | None) -> np.ndarray:
        """A turn's audio for the end-of-turn model: ≤ 8 s, from just before the turn's first
        speech onset up to now."""
        start = turn_start_ms if turn_start_ms is not None else 0.0
        start = max(start - PREROLL_MS, self.stream_ms - TURN_AUDIO_MS)
        n = int((self.stream_ms - start) * SAMPLE_RATE / 1000)
        return self._ring.last(n)

    async def aclose(self) -> None:
        if self.stt_stream is not None:
            try:
                await asyncio.wait_for(self.stt_stream.aclose(), 2.0)
            except Exception as exc:
                log.debug("closing STT stream: %r", exc)
        try:
            await self.vad.aclose()
        except Exception as exc:
            log.debug("closing VAD stream: %r", exc)

    # -------------------------------------------------------------------------------------
    async def _audio_loop(self) -> None:
        # Ends when the inbox is closed and drained: the far end is gone.
        while (first := await self.inbox.get()) is not None:
            # A call that fell behind (its VAD windows queued behind an end-of-turn check)
            # sends everything waiting in one round trip, to catch up at once rather than a
            # window per trip. Otherwise one frame at a time: a stream's windows run one
            # after another, so a request of several cannot share a batched run with other
            # calls' windows the way single ones do.
            waiting = self.inbox.take_waiting() if len(self.inbox) >= CATCH_UP_FRAMES else []
            frames: list[np.ndarray] = []
            for carrier_frame in (first, *waiting):
                stt_audio = self._formats.for_stt(carrier_frame)
                if len(stt_audio):
                    self._queue_stt(stt_audio)
                frames += self._formats.for_vad(carrier_frame)
            if frames:
                await self._hear(frames)

    async def _hear(self, frames: list[np.ndarray]) -> None:
        """16 kHz frames through the VAD, then each in order through the ring buffer, the
        turn-taking and the barge-in check, as if they had come one at a time."""
        core = self._core
        events: list[VadEvent | None] = [None] * len(frames)
        try:
            events = await self.vad.process_frames(frames)
        except Exception as exc:
            if not self._vad_failed:  # report once; a broken VAD must not kill the call
                self._vad_failed = True
                core.emit_error(ErrorStage.VAD, exc)
        for frame, event in zip(frames, events, strict=True):
            self._ring.append(frame)
            if self._on_caller_audio is not None:
                self._on_caller_audio(frame)
            self.stream_ms += len(frame) * 1000.0 / SAMPLE_RATE
            if event is not None:
                core.turns.on_vad(event)
            core.barge.evaluate()

    def _queue_stt(self, item: SttItem) -> None:
        if len(self._stt_q) == STT_BACKLOG_FRAMES:
            self.inbox.dropped += 1  # lost on its way to the STT: the call's one counter
        self._stt_q.append(item)
        self._stt_held += 1
        if (isinstance(item, _Flush) or self._stt_held >= STT_SILENCE_CHUNK_FRAMES
                or self.vad.speaking
                or self.vad.probability >= self._core.settings.vad.threshold):
            self._stt_held = 0
            self._stt_ready.set()

    def _next_stt_item(self) -> SttItem:
        """A flush, or the queued frames up to the next flush as one chunk."""
        q = self._stt_q
        chunk: list[np.ndarray] = []
        while q and not isinstance(head := q[0], _Flush):
            chunk.append(head)
            q.popleft()
        if not chunk:
            return q.popleft()
        return chunk[0] if len(chunk) == 1 else np.concatenate(chunk)

    async def _stt_feed_loop(self) -> None:
        failures = 0
        while True:
            while not self._stt_q:
                self._stt_ready.clear()
                await self._stt_ready.wait()
            item = self._next_stt_item()
            stream = self.stt_stream
            if stream is None:
                continue
            try:
                if isinstance(item, _Flush):
                    await stream.flush()
                else:
                    await stream.push(item)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The transcript loop reports and reopens broken streams; log the first error.
                failures += 1
                if failures == 1:
                    log.warning("STT push failed: %r", exc)

    async def _transcript_loop(self) -> None:
        core = self._core
        failures = 0
        while True:
            stream = self.stt_stream
            assert stream is not None
            error: BaseException | None = None
            try:
                async for t in stream.events():
                    failures = 0
                    self._on_transcript(t)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = exc
            if core.ending:
                return
            failures += 1
            self.stt_errors += 1
            if error is not None:
                core.emit_error(ErrorStage.STT, error)
            else:
                core.emit(ev.SessionError, code="stt_stream_ended", stage=str(ErrorStage.STT),
                          message="the STT stream ended")
            if failures > STT_MAX_FAILURES:
                core.failures.exhausted(ErrorStage.STT, "speech recognition keeps failing")
                return
            await asyncio.sleep(0.2 * 2**failures)
            try:
                new = await open_stt(self._stt, self.stt_format, self._language)
            except Exception as exc:
                core.emit_error(ErrorStage.STT, exc)
                continue
            self.stt_stream = new
            try:
                await stream.aclose()
            except Exception as exc:
                log.debug("closing the failed STT stream: %r", exc)

    def _on_transcript(self, t: TranscriptLike) -> None:
        text = (t.text or "").strip()
        self._core.emit(ev.UserTranscription, text=text, is_final=bool(t.is_final),
                        confidence=float(t.confidence))
        self._core.turns.on_transcript(text, bool(t.is_final))
