"""Playing one agent speech into the playout sink, and knowing what the caller heard.

A speech is a sequence of sentences (streamed in while the LLM is still generating) or one
pre-rendered clip. Each sentence becomes one playout *segment*: `start_segment`, 20 ms `write`s,
`end_segment`; the sink checkpoints each segment and `wait_played` resolves when the far end
confirms it was heard.

- Latency: the next sentence is synthesised while the current one is being written
  (`lookahead` segments ahead), so TTS time-to-first-byte does not open gaps between sentences.
- Hold: before every 20 ms write (and before ending a segment) the writer waits on `gate`.
  Closing the gate stops new audio reaching the sink. Pacing is the sink's alone: its `write`
  pushes back once it holds its small budget of unplayed audio (one clock, the sink's), so
  what a hold or a clear leaves playing is bounded by that budget.
- Cut and resume (barge-in): a transport cannot pause, so to make a hold audible at once the
  conversation `cut`s: the sink is cleared and each unfinished segment remembers where the caller
  stopped hearing it. A false interruption then `resume`s: from just before that position the
  audio is written again (into a new sink segment, since a cleared one is gone), with a short
  fade-in, and the writer carries on. For that every segment keeps the audio it wrote but which
  may not have been heard yet: its last `KEEP_FOR_RESUME_MS`, dropped once it has played.
- Duck (barge-in with `interruption.hold: duck`): `duck` cuts and resumes at once at a lower
  `gain`, so the caller hears the agent softly from the next frame on instead of after what the
  far end holds; the writer carries on at that gain until `unduck`. What is kept for a resume
  stays at full volume.
- Codec pass-through: TTS audio already in the sink's carrier codec (μ-law 8 kHz for a μ-law
  phone leg, from an `EncodedPlayoutSink`) is written as the vendor's bytes (a uint8 array
  here), never decoded and re-encoded; a resume decodes what it re-sends, for the fade-in.
- Heard text: a segment acknowledged as played was heard in full; of a segment cut short, the
  share `heard_ms / duration` of its text (cut back to a word boundary). That is what the
  assistant's context message is truncated to.

Memory is bounded: sentences and synthesised chunks sit in bounded queues, so a fast LLM or TTS
simply waits for playout; the audio kept for a resume is bounded per unplayed segment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.audio.frames import as_int16
from pipelines.audio.g711 import ulaw_decode
from pipelines.audio.inbox import AudioFormat
from pipelines.ports import AudioChunkLike, EncodedPlayoutSink, PlayoutSink, TTSLike

log = logging.getLogger(__name__)

# Rough speaking rate used to estimate a segment's duration while its TTS is still running
# (about 15 characters per second of speech).
MS_PER_CHAR_ESTIMATE = 65.0
_PLAYED_SLACK_S = 3.0  # extra wait for the last playout ack beyond the audio still queued
# A transport's played position is an estimate from its send clock, a little ahead of what the
# caller really heard (network and the far end's jitter buffer): a resume repeats this much
# rather than risk dropping a syllable, and fades in over the first few ms to avoid a click.
RESUME_REWIND_MS = 40.0
RESUME_FADE_MS = 10.0
# Audio kept per unplayed segment for a resume: well beyond what a pacing sink holds unplayed
# (the Plivo playout: max_ahead_ms at the far end plus a few frames locally).
KEEP_FOR_RESUME_MS = 2000.0
_FULL_EPS_MS = 1.0  # heard up to here: heard in full (the sink rounds to whole frames)


class SpeechError(Exception):
    """A provider failed while producing this speech; `stage` is "tts" (or "llm" upstream)."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage}: {cause}")
        self.stage = stage
        self.cause = cause


@dataclass(eq=False, slots=True)
class Segment:
    id: str
    text: str
    part: int = 0  # which assistant message (LLM round) this sentence belongs to
    audio: tuple[np.ndarray, int] | None = None  # pre-rendered clip instead of TTS
    audio_ms: float = 0.0  # synthesised so far
    synth_done: bool = False  # TTS finished: audio_ms is the segment's duration
    written_ms: float = 0.0  # handed to the sink
    started: bool = False  # first audio written
    ended: bool = False  # end_segment sent
    played: bool = False  # far end confirmed playout
    # Cut and resume: the sink segment now carrying this segment's audio (a new one after each
    # resume), the position in the segment that sink segment started at, and whether the audio
    # is cut (`base_ms` is then what was heard) and waits to be resumed.
    sink_id: str = ""
    base_ms: float = 0.0
    held: bool = False
    resumes: int = 0
    # Recently written audio (start ms in the segment, samples, rate) for a resume.
    kept: deque[tuple[float, np.ndarray, int]] = field(default_factory=deque)

    def heard_fraction(self, played_ms: float) -> float:
        if self.played:
            return 1.0
        if not self.started:
            return 0.0
        total = self.audio_ms
        if not self.synth_done:
            total = max(total, len(self.text) * MS_PER_CHAR_ESTIMATE)
        return 1.0 if total <= 0 else min(1.0, played_ms / total)


def text_prefix(text: str, fraction: float) -> str:
    """The first `fraction` of `text`, cut back to the last whole word."""
    if fraction >= 0.999:
        return text
    if fraction <= 0.0:
        return ""
    cut = int(len(text) * fraction)
    if cut < len(text) and not text[cut].isspace():
        space = text.rfind(" ", 0, cut + 1)
        cut = space if space > 0 else 0
    return text[:cut].rstrip(" ,;:-–—")


class _Failure:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


@dataclass(eq=False, slots=True)
class _Pending:
    segment: Segment
    chunks: asyncio.Queue[Any]


class SpeechOutput:
    """One speech's playout. `lookahead`: segments synthesised ahead of the one being written;
    `max_sentences` (0 = unbounded) / `max_chunks`: queue bounds. The sink paces (see the
    module docstring)."""

    def __init__(
        self,
        sink: PlayoutSink,
        tts: TTSLike | None,
        *,
        gate: asyncio.Event,
        next_segment_id: Callable[[], str],
        voice: str | None = None,
        on_segment_started: Callable[[Segment], None] = lambda s: None,
        on_segment_played: Callable[[Segment], None] = lambda s: None,
        before_first_audio: Callable[[], Awaitable[None]] | None = None,
        lookahead: int = 1,
        max_sentences: int = 64,
        max_chunks: int = 64,
    ) -> None:
        self._sink = sink
        self._tts = tts
        self._voice = voice
        self._gate = gate
        self._next_id = next_segment_id
        self._on_started = on_segment_started
        self._on_played = on_segment_played
        self._before_first_audio = before_first_audio
        self._max_chunks = max_chunks
        self._sentences: asyncio.Queue[Segment | None] = asyncio.Queue(max_sentences)
        self._ready: asyncio.Queue[_Pending | None] = asyncio.Queue(max(1, lookahead))
        self._played_tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._frozen = False
        # Cut / resume / stop take turns (a cut waits for a resume in progress to stop writing).
        self._control = asyncio.Lock()
        self._stop_resend = False  # a cut or stop is waiting: a resume writes no more
        self._silent = False  # the sink was cleared and nothing of ours was written since
        self._settled = asyncio.Event()  # no segment is cut and waiting for its resume
        self._settled.set()
        self._gain = 1.0  # below 1 while ducked
        self.segments: list[Segment] = []
        # Timings (event-loop clock) for turn metrics.
        self.tts_request_at: float | None = None
        self.tts_first_chunk_at: float | None = None
        self.first_audio_at: float | None = None
        self.first_played_at: float | None = None

    # -- input ---------------------------------------------------------------------------------
    async def add_text(self, text: str, part: int = 0) -> Segment | None:
        """Queue one sentence (waits when too far ahead of playout)."""
        text = text.strip()
        if not text:
            return None
        return await self._add(Segment(self._next_id(), text, part))

    async def add_audio(self, samples: np.ndarray, sample_rate: int, text: str = "",
                        part: int = 0) -> Segment:
        """Queue a pre-rendered clip; `text` is what it says (for context and events)."""
        seg = Segment(self._next_id(), text.strip(), part, audio=(as_int16(samples), sample_rate))
        return await self._add(seg)

    async def _add(self, seg: Segment) -> Segment:
        if self._closed:
            raise RuntimeError("speech output already closed")
        seg.sink_id = seg.id
        self.segments.append(seg)
        await self._sentences.put(seg)
        return seg

    async def close(self) -> None:
        """No more sentences: `run` returns once everything queued has been played."""
        if not self._closed:
            self._closed = True
            await self._sentences.put(None)

    def freeze(self) -> None:
        """The sink is about to be cleared: later playout acks no longer mean "heard in full"."""
        self._frozen = True

    # -- barge-in: cut, resume, stop -------------------------------------------------------------
    async def cut(self) -> None:
        """Make a hold audible now: clear the sink and remember, for every unfinished segment,
        where the caller stopped hearing it. Call with the gate closed; `resume` re-sends."""
        self._stop_resend = True
        async with self._control:
            self._stop_resend = False
            live = [s for s in self.segments if s.started and not s.played and not s.held]
            for seg in live:
                seg.held = True  # from here on an ack released by the clear is not "played"
            if live:
                self._settled.clear()
            try:
                if live and not self._silent:
                    await self._sink.clear()
            finally:
                self._silent = True
                for seg in live:
                    heard = seg.base_ms + self._sink.played_ms(seg.sink_id)
                    seg.base_ms = min(heard, seg.written_ms)
                    if seg.ended and seg.base_ms >= seg.written_ms - _FULL_EPS_MS:
                        seg.held = False  # it had played out; only its ack was still due
                        self._mark_played(seg)
                self._update_settled()

    async def resume(self) -> None:
        """After a false interruption: write the cut segments again from just before where the
        caller stopped hearing them, each into a new sink segment; the writer carries on once
        the gate opens (keep it closed until this returns)."""
        async with self._control:
            fade = True
            try:
                for seg in self.segments:
                    if not seg.held:
                        continue
                    if self._stop_resend:
                        return  # held again (or stopped) before we got here
                    start, pieces = self._resume_from(seg)
                    seg.held = False
                    seg.resumes += 1
                    seg.sink_id = f"{seg.id}~{seg.resumes}"
                    seg.base_ms = start
                    await self._sink.start_segment(seg.sink_id)
                    for samples, rate in pieces:
                        if samples.dtype == np.uint8:
                            samples = ulaw_decode(samples)  # re-sent as PCM, faded in
                        if fade:
                            samples, fade = _fade_in(samples, rate), False
                        self._silent = False
                        await self._sink.write(_scaled(samples, self._gain), rate)
                        if self._stop_resend:
                            return  # the next cut finds this segment live and measures it
                    if seg.ended:
                        await self._sink.end_segment()
                        self._track(seg)
            except BaseException:
                # The transport failed (or the call is ending): what is still cut stays unheard
                # rather than leaving the speech waiting for a resume that will not come.
                for seg in self.segments:
                    if seg.held:
                        seg.held, seg.sink_id = False, ""
                raise
            finally:
                self._update_settled()

    async def stop_audio(self) -> None:
        """The speech stops for good: clear the sink, unless a cut already did and nothing was
        written since. Heard positions freeze where the caller stopped hearing."""
        self.freeze()
        self._stop_resend = True
        async with self._control:
            if not self._silent:
                await self._sink.clear()
            self._silent = True

    async def duck(self, gain: float) -> None:
        """Lower the agent's voice now: what the far end holds is re-sent at `gain`, and so is
        everything written from here on. Call with the gate closed, as for `cut`."""
        await self.cut()
        self._gain = gain
        await self.resume()

    def unduck(self) -> None:
        """Full volume from the next write (what the far end already holds plays out ducked:
        at most the sink's small budget)."""
        self._gain = 1.0

    @property
    def held(self) -> bool:
        """Some audio is cut and waits for `resume` (or the speech's end)."""
        return not self._settled.is_set()

    def _resume_from(self, seg: Segment) -> tuple[float, list[tuple[np.ndarray, int]]]:
        """Where to resume `seg` and the kept audio from there on."""
        start = max(0.0, seg.base_ms - RESUME_REWIND_MS)
        kept = seg.kept
        if not kept:
            return seg.written_ms, []
        if kept[0][0] > start + _FULL_EPS_MS:
            log.warning("resume of segment %s: %.0f ms of its audio no longer kept", seg.id,
                        kept[0][0] - start)
            start = kept[0][0]
        pieces: list[tuple[np.ndarray, int]] = []
        for at, samples, rate in kept:
            if at + len(samples) * 1000.0 / rate <= start:
                continue
            skip = max(0, round((start - at) * rate / 1000.0))
            if skip < len(samples):
                pieces.append((samples[skip:], rate))
        return start, pieces

    def _update_settled(self) -> None:
        if any(s.held for s in self.segments):
            self._settled.clear()
        else:
            self._settled.set()

    # -- what was heard ------------------------------------------------------------------------
    def text(self, part: int | None = None) -> str:
        return " ".join(s.text for s in self.segments if part is None or s.part == part)

    def heard_text(self, part: int | None = None, *, assume_written_plays: bool = False) -> str:
        """Text the caller heard (per part, or all). With `assume_written_plays`, audio already
        handed to the sink counts as heard (used when we stop producing without clearing)."""
        out: list[str] = []
        for seg in self.segments:
            if part is not None and seg.part != part:
                continue
            if assume_written_plays and seg.started:
                played = seg.written_ms
            else:
                played = self._heard_ms(seg)
            piece = text_prefix(seg.text, seg.heard_fraction(played))
            if piece:
                out.append(piece)
        return " ".join(out)

    def _heard_ms(self, seg: Segment) -> float:
        if not seg.started:
            return 0.0
        if seg.held:
            return seg.base_ms
        return seg.base_ms + self._sink.played_ms(seg.sink_id)

    def current_segment_id(self) -> str:
        """The segment the caller is (or was last) hearing."""
        for seg in self.segments:
            if seg.started and not seg.played:
                return seg.id
        started = [s for s in self.segments if s.started]
        return started[-1].id if started else ""

    @property
    def audio_started(self) -> bool:
        return self.first_audio_at is not None

    # -- the work ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Synthesise and write every queued sentence, then wait until it has been played.

        Raises SpeechError if TTS fails. Cancelling stops synthesis and writing at once (the
        caller clears the sink first when the audio must stop)."""
        synth = asyncio.create_task(self._synth_loop(), name="speech-synth")
        try:
            while (pending := await self._ready.get()) is not None:
                await self._write_segment(pending)
            await synth
            await self._wait_all_played()
        finally:
            synth.cancel()
            for t in self._played_tasks:
                t.cancel()
            await asyncio.gather(synth, *self._played_tasks, return_exceptions=True)

    async def _synth_loop(self) -> None:
        while (seg := await self._sentences.get()) is not None:
            pending = _Pending(seg, asyncio.Queue(self._max_chunks))
            await self._ready.put(pending)
            if seg.audio is not None:
                samples, rate = seg.audio
                seg.audio_ms = len(samples) * 1000.0 / rate
                seg.synth_done = True
                await pending.chunks.put(seg.audio)
                await pending.chunks.put(None)
                continue
            if self._tts is None:
                await pending.chunks.put(_Failure(RuntimeError("no TTS for text speech")))
                return
            loop = asyncio.get_running_loop()
            if self.tts_request_at is None:
                self.tts_request_at = loop.time()
            stream = self._tts.synthesize(seg.text, self._voice)
            try:
                async for chunk in stream:
                    if self.tts_first_chunk_at is None:
                        self.tts_first_chunk_at = loop.time()
                    samples, rate = self._samples(chunk)
                    seg.audio_ms += len(samples) * 1000.0 / rate
                    await pending.chunks.put((samples, rate))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a vendor failure becomes a typed speech error
                await pending.chunks.put(_Failure(exc))
                return
            finally:
                await aclose_stream(stream)
            seg.synth_done = True
            await pending.chunks.put(None)
        await self._ready.put(None)

    async def _write_segment(self, pending: _Pending) -> None:
        seg = pending.segment
        loop = asyncio.get_running_loop()
        while (item := await pending.chunks.get()) is not None:
            if isinstance(item, _Failure):
                raise SpeechError("tts", item.exc)
            samples, rate = item
            step = max(1, rate // 50)  # 20 ms at the chunk's own rate
            for off in range(0, len(samples), step):
                await self._gate.wait()
                if not seg.started and self.first_audio_at is None \
                        and self._before_first_audio is not None:
                    await self._before_first_audio()
                # The hold may have begun meanwhile. From here to the sink call nothing waits
                # (but the sink itself), so a cut always sees this piece as written.
                await self._gate.wait()
                piece = samples[off : off + step]
                if not seg.started:
                    await self._sink.start_segment(seg.sink_id)
                    seg.started = True
                    if self.first_audio_at is None:
                        self.first_audio_at = loop.time()
                    self._on_started(seg)
                self._note_written(seg, piece, rate)
                if piece.dtype == np.uint8 and self._gain == 1.0:
                    assert isinstance(self._sink, EncodedPlayoutSink)
                    await self._sink.write_encoded(piece.tobytes(), AudioFormat(rate, "mulaw"))
                else:
                    if piece.dtype == np.uint8:
                        piece = ulaw_decode(piece)  # ducked: the samples are needed
                    await self._sink.write(_scaled(piece, self._gain), rate)
        if seg.started:
            await self._gate.wait()  # a resume may be writing this segment again
            await self._sink.end_segment()
            seg.ended = True
            self._track(seg)

    def _samples(self, chunk: AudioChunkLike) -> tuple[np.ndarray, int]:
        """A TTS chunk as what the sink is written: μ-law bytes (uint8) when the sink carries
        that codec at that rate as it is, else int16 PCM."""
        rate = int(chunk.sample_rate)
        if chunk.encoding == "mulaw":
            sink = self._sink
            if isinstance(sink, EncodedPlayoutSink) and sink.carries(AudioFormat(rate, "mulaw")):
                return np.asarray(chunk.samples, dtype=np.uint8).reshape(-1), rate
            return ulaw_decode(chunk.samples), rate
        return as_int16(chunk.samples), rate

    def _note_written(self, seg: Segment, piece: np.ndarray, rate: int) -> None:
        """Account for a piece about to be written, and keep it for a resume (bounded)."""
        piece_ms = len(piece) * 1000.0 / rate
        seg.kept.append((seg.written_ms, piece, rate))
        seg.written_ms += piece_ms
        kept = seg.kept
        while kept and seg.written_ms - kept[0][0] - len(kept[0][1]) * 1000.0 / kept[0][2] \
                > KEEP_FOR_RESUME_MS:
            kept.popleft()
        self._silent = False

    def _track(self, seg: Segment) -> None:
        self._played_tasks.append(asyncio.create_task(
            self._track_played(seg, seg.sink_id), name=f"played-{seg.sink_id}"))

    async def _track_played(self, seg: Segment, sink_id: str) -> None:
        await self._sink.wait_played(sink_id)
        # A sink releases the waits of what it cleared: that audio was cut, not played.
        if self._frozen or seg.held or seg.played or seg.sink_id != sink_id:
            return
        self._mark_played(seg)

    def _mark_played(self, seg: Segment) -> None:
        seg.played = True
        seg.kept.clear()
        if self.first_played_at is None:
            self.first_played_at = asyncio.get_running_loop().time()
        self._on_played(seg)

    async def _wait_all_played(self) -> None:
        while True:
            await self._settled.wait()  # cut audio counts once it has been resumed
            tasks = [t for t in self._played_tasks if not t.done()]
            if not tasks:
                if self._settled.is_set():
                    return
                continue
            unplayed_ms = sum(s.written_ms - s.base_ms for s in self.segments
                              if s.started and not s.played)
            timeout = unplayed_ms / 1000.0 + _PLAYED_SLACK_S
            _done, late = await asyncio.wait(tasks, timeout=timeout)
            if late:
                # The far end never acknowledged: do not hang the conversation on a lost ack.
                log.warning("no playout ack for %d segment(s) after %.1fs", len(late), timeout)
                return


def _fade_in(samples: np.ndarray, rate: int) -> np.ndarray:
    """A copy of `samples` whose first RESUME_FADE_MS ramp up from silence (no click)."""
    n = min(len(samples), int(rate * RESUME_FADE_MS / 1000.0))
    out = samples.copy()
    if n > 0:
        out[:n] = (out[:n].astype(np.float32) * np.linspace(0.0, 1.0, n, endpoint=False)
                   ).astype(np.int16)
    return out




def _scaled(samples: np.ndarray, gain: float) -> np.ndarray:
    if gain == 1.0:
        return samples
    return (samples.astype(np.float32) * gain).astype(np.int16)


async def aclose_stream(stream: AsyncIterator[Any]) -> None:
    """Close a provider stream promptly (async generators otherwise linger until GC)."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()
