"""Scripted stand-ins for everything outside the conversation engine, for deterministic tests.

All of them run on the event-loop clock, so under `virtual_clock.run_virtual` a whole call runs
in a fraction of a second with exact, repeatable timings.

- `Caller` feeds 20 ms frames in real (loop) time: speech frames are a constant non-zero level,
  silence is zeros — so the fakes below can tell speech from silence without a model.
- `EnergyVad` is a VadStream built on the real start/stop hysteresis (pipelines.vad.segmenter)
  with "speech = any non-zero sample" as the classifier.
- `FakeSTT` assigns the next scripted text to each run of speech frames: interim words while the
  caller talks (streaming) and a final on `flush()` (or after `endpoint_ms` of silence).
- `ScriptedEndpointing` mirrors EndpointingPolicy (threshold, re-check, max wait) with scripted
  probabilities and a fixed model time.
- `FakeLLM` yields scripted text / tool calls / usage, can hang or fail; records every request.
- `FakeTTS` produces a tone whose duration is proportional to the text length.
- `FakePlayoutSink` plays audio out in real time with ≤ max_ahead_ms queued (write blocks beyond
  that, like the Plivo writer), acks each segment once played, and supports clear().
"""

from __future__ import annotations

import asyncio
import copy
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines import events as ev
from pipelines.conversation import Conversation
from pipelines.settings import ConversationSettings, TurnSettings, VadSettings
from pipelines.turn.base import EndOfTurnDecision
from pipelines.turn.endpointing import EndpointingPolicy
from pipelines.vad.base import VadEvent
from pipelines.vad.segmenter import SpeechSegmenter
from providers.base import AudioChunk, ProviderError, TextDelta, ToolCall, Transcript, Usage

FRAME = 320
SR = 16000


def _now() -> float:
    return asyncio.get_running_loop().time()


# ---------------------------------------------------------------------------------------------
# Caller audio + VAD
# ---------------------------------------------------------------------------------------------


class Caller:
    """Pushes one frame every 20 ms: silence, or speech while `speak()` is running."""

    def __init__(self, conv: Conversation, level: int = 3000) -> None:
        self.conv = conv
        self._speech = np.full(FRAME, level, dtype=np.int16)
        self._silence = np.zeros(FRAME, dtype=np.int16)
        self._left = 0
        self._done: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.speech_ended_at: float | None = None  # loop time the last speech frame was sent

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def speak(self, ms: int) -> None:
        """Speak for `ms` (a multiple of 20); returns when the last speech frame was sent."""
        assert self._left == 0, "already speaking"
        self._left = ms // 20
        self._done = asyncio.get_running_loop().create_future()
        await self._done

    async def pause(self, ms: int) -> None:
        await asyncio.sleep(ms / 1000)

    async def _run(self) -> None:
        # Like a real transport, a frame arrives when the 20 ms it covers are over.
        while True:
            await asyncio.sleep(0.02)
            if self._left > 0:
                await self.conv.push_audio(self._speech)
                self._left -= 1
                if self._left == 0:
                    self.speech_ended_at = _now()
                    assert self._done is not None
                    self._done.set_result(None)
            else:
                await self.conv.push_audio(self._silence)


class EnergyVad:
    """VadStream: the real hysteresis (start_ms/stop_ms) over "any non-zero sample" frames."""

    def __init__(self, settings: VadSettings) -> None:
        self._seg = SpeechSegmenter(settings.start_ms, settings.stop_ms, SR)
        self._clock = 0
        self.speaking = False
        self.probability = 0.0
        self.closed = False
        self.calls: list[int] = []  # frames per process_frames call (one model round trip)

    async def process(self, frame: np.ndarray) -> VadEvent | None:
        voiced = bool(frame.any())
        self.probability = 1.0 if voiced else 0.0
        event = self._seg.update(voiced, self._clock, len(frame))
        self._clock += len(frame)
        self.speaking = self._seg.speaking
        return event

    async def process_frames(self, frames: Sequence[np.ndarray]) -> list[VadEvent | None]:
        self.calls.append(len(frames))
        return [await self.process(f) for f in frames]

    def reset(self) -> None:
        self._seg.reset()
        self.speaking = False

    def retune(self, settings: VadSettings) -> None:
        self._seg.retune(settings.start_ms, settings.stop_ms)

    async def aclose(self) -> None:
        self.closed = True


# ---------------------------------------------------------------------------------------------
# STT
# ---------------------------------------------------------------------------------------------


class FakeSTT:
    """Recognises the i-th run of speech frames as `utterances[i]` ("" = nothing understood).

    streaming: interim results grow by one word every `word_ms` of speech; the final comes on
    `flush()` (or by itself after `endpoint_ms` of silence when set). Not streaming (a batch
    engine): nothing at all until `flush()`. Results arrive `latency_ms` after their cause.
    """

    def __init__(self, utterances: list[str], *, streaming: bool = True, word_ms: int = 150,
                 latency_ms: int = 40, endpoint_ms: int | None = None,
                 fail_streams: int = 0, corrections: dict[str, str] | None = None,
                 finalizes_at_pauses: bool = False) -> None:
        self.utterances = deque(utterances)
        # Say so (pipelines.ports.PauseFinalizingStream), as Deepgram's streams do.
        self.finalizes_at_pauses = finalizes_at_pauses
        # final text that differs from what the interims showed (an STT revising its guess)
        self.corrections = corrections or {}
        self.fail_streams = fail_streams  # this many streams break (events() raises) at once
        self.streaming = streaming
        self.word_ms = word_ms
        self.latency_ms = latency_ms
        self.endpoint_ms = endpoint_ms
        self.streams: list[FakeSTTStream] = []
        self.opened_with: list[tuple[int, str]] = []

    async def open(self, sample_rate: int, language: str) -> FakeSTTStream:
        self.opened_with.append((sample_rate, language))
        stream = FakeSTTStream(self, broken=len(self.streams) < self.fail_streams)
        self.streams.append(stream)
        return stream

    @property
    def flushes(self) -> int:
        return sum(s.flushes for s in self.streams)


class FakeSTTStream:
    def __init__(self, stt: FakeSTT, broken: bool = False) -> None:
        self._stt = stt
        self.broken = broken
        self._q: asyncio.Queue[Transcript | None] = asyncio.Queue()
        self._pending: list[str] = []  # words of finished runs not finalised yet
        self._words: list[str] | None = None  # the run being spoken
        self._shown = 0
        self._speech_ms = 0
        self._silence_ms = 0
        self.frames = 0
        self.chunks: list[int] = []  # samples per push
        self.flushes = 0
        self.closed = False

    @property
    def finalizes_at_pauses(self) -> bool:
        return self._stt.finalizes_at_pauses

    async def push(self, chunk: np.ndarray) -> None:
        # The engine may send several frames at a time; words are counted in 20 ms frames.
        self.chunks.append(len(chunk))
        for i in range(0, len(chunk), FRAME):
            self._push_frame(chunk[i:i + FRAME])

    def _push_frame(self, frame: np.ndarray) -> None:
        self.frames += 1
        if frame.any():
            if self._words is None:
                text = self._stt.utterances.popleft() if self._stt.utterances else ""
                self._words = text.split()
                self._shown = 0
                self._speech_ms = 0
            self._silence_ms = 0
            self._speech_ms += 20
            if self._stt.streaming:
                n = min(len(self._words), self._speech_ms // self._stt.word_ms)
                if n > self._shown:
                    self._shown = n
                    self._send(" ".join(self._pending + self._words[:n]), final=False)
            return
        if self._words is not None:
            # A run ended: its words wait for the final (a streaming engine shows them all).
            self._pending += self._words
            if self._stt.streaming and self._shown < len(self._words) and self._pending:
                self._send(" ".join(self._pending), final=False)
            self._words = None
        if self._pending and self._stt.endpoint_ms is not None:
            self._silence_ms += 20
            if self._silence_ms >= self._stt.endpoint_ms:
                self._finalise()

    async def flush(self) -> None:
        self.flushes += 1
        if self._words is not None:
            self._pending += self._words
            self._words = None
        self._finalise()

    def _finalise(self) -> None:
        text = " ".join(self._pending)
        text = self._stt.corrections.get(text, text)
        self._pending = []
        self._send(text, final=True)

    def _send(self, text: str, *, final: bool) -> None:
        t = Transcript(text=text, is_final=final)
        asyncio.get_running_loop().call_later(self._stt.latency_ms / 1000, self._q.put_nowait, t)

    async def events(self) -> AsyncIterator[Transcript]:
        if self.broken:
            await asyncio.sleep(0.1)
            raise ProviderError("fakestt", "connection reset", code="ws_closed")
        while (t := await self._q.get()) is not None:
            yield t

    async def aclose(self) -> None:
        self.closed = True
        self._q.put_nowait(None)


# ---------------------------------------------------------------------------------------------
# End of turn
# ---------------------------------------------------------------------------------------------


class _ScriptedModel:
    """An EndOfTurnModel that answers `probs` in turn (the last repeats), `model_ms` each."""

    def __init__(self, owner: ScriptedEndpointing, probs: list[float]) -> None:
        self.owner = owner
        self.probs = probs
        self.k = 0

    async def predict(self, audio: np.ndarray) -> float:
        self.owner.audio_ms.append(len(audio) / SR * 1000)
        await asyncio.sleep(self.owner.model_ms / 1000)
        p = self.probs[min(self.k, len(self.probs) - 1)]
        self.k += 1
        return p


class ScriptedEndpointing:
    """The real EndpointingPolicy (silence budget from P and the words, re-checks) on the loop
    clock, with scripted model probabilities: `script[i]` is used for the i-th decide() call,
    one probability per model check (the last repeats). The model takes `model_ms` per check."""

    def __init__(self, settings: TurnSettings, script: list[list[float]] | None = None,
                 model_ms: int = 60, early: bool = False) -> None:
        self.settings = settings
        self.script = deque(script or [])
        self.model_ms = model_ms
        self.early = early  # run the first check at the VAD's pause, as the real policy does
        self.early_checks = 0
        self.calls = 0
        self.cancelled = 0
        self.audio_ms: list[float] = []
        self.texts: list[str] = []

    def early_check(self, get_audio: Callable[[], np.ndarray]) -> asyncio.Task[float] | None:
        """The next decide()'s first probability, computed now (opt-in: `early`)."""
        if not self.early:
            return None
        self.early_checks += 1
        probs = self.script[0] if self.script else [0.9]
        return asyncio.ensure_future(_ScriptedModel(self, probs[:1]).predict(get_audio()))

    async def decide(self, get_audio: Callable[[], np.ndarray],
                     silence_ms_at_start: float = 0, get_text: Callable[[], str] = lambda: "",
                     scale: Callable[[float], float] | None = None,
                     early: asyncio.Future[float] | None = None) -> EndOfTurnDecision:
        self.calls += 1
        probs = self.script.popleft() if self.script else [0.9]
        model = _ScriptedModel(self, probs)
        if early is not None:
            model.k = 1  # its first probability was the early check's
        policy = EndpointingPolicy(model, self.settings)

        def text() -> str:
            t = get_text()
            self.texts.append(t)
            return t

        try:
            return await policy.decide(get_audio, silence_ms_at_start, text, scale, early)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


# ---------------------------------------------------------------------------------------------
# LLM
# ---------------------------------------------------------------------------------------------


@dataclass
class Hang:
    """The LLM stream stops responding (until cancelled)."""


@dataclass
class Fail:
    error: Exception = field(
        default_factory=lambda: ProviderError("fakellm", "upstream 503", status=503)
    )


@dataclass
class Pause:
    ms: float


Step = str | ToolCall | Usage | Hang | Fail | Pause


class FakeLLM:
    """Each stream() call plays the next script: text is yielded word by word (`token_ms`
    apart) after `ttft_ms`; ToolCall/Usage are yielded as they are."""

    def __init__(self, scripts: list[list[Step]] | None = None, *, ttft_ms: int = 200,
                 token_ms: int = 20, default: list[Step] | None = None) -> None:
        self.scripts = deque(scripts or [])
        self.default = default if default is not None else ["Okay."]
        self.ttft_ms = ttft_ms
        self.token_ms = token_ms
        self.requests: list[dict[str, Any]] = []
        self.request_times: list[float] = []  # loop time of each request
        self.cancelled = 0

    def stream(self, messages: list[dict[str, Any]], tools: list[Any] | None = None,
               settings: dict[str, Any] | None = None) -> AsyncIterator[Any]:
        self.requests.append({"messages": copy.deepcopy(messages), "tools": tools})
        self.request_times.append(asyncio.get_running_loop().time())
        script = self.scripts.popleft() if self.scripts else list(self.default)
        return self._play(script)

    async def _play(self, script: list[Step]) -> AsyncIterator[Any]:
        try:
            await asyncio.sleep(self.ttft_ms / 1000)
            first = True
            for step in script:
                if isinstance(step, str):
                    for token in re.findall(r"\S+\s*", step):
                        if not first:
                            await asyncio.sleep(self.token_ms / 1000)
                        first = False
                        yield TextDelta(token)
                elif isinstance(step, Hang):
                    await asyncio.Future()
                elif isinstance(step, Fail):
                    raise step.error
                elif isinstance(step, Pause):
                    await asyncio.sleep(step.ms / 1000)
                else:
                    yield step
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


# ---------------------------------------------------------------------------------------------
# TTS
# ---------------------------------------------------------------------------------------------


class FakeTTS:
    """A 300 Hz tone of `ms_per_char` per character, in `chunk_ms` chunks after `ttfb_ms`."""

    def __init__(self, *, ms_per_char: float = 50, ttfb_ms: int = 60, chunk_ms: int = 200,
                 sample_rate: int = SR, fail_on: str | None = None) -> None:
        self.ms_per_char = ms_per_char
        self.ttfb_ms = ttfb_ms
        self.chunk_ms = chunk_ms
        self.sample_rate = sample_rate
        self.fail_on = fail_on
        self.requests: list[str] = []

    def duration_ms(self, text: str) -> float:
        return len(text) * self.ms_per_char

    def audio(self, text: str) -> np.ndarray:
        """The samples `synthesize(text)` yields, in one array."""
        total = int(self.duration_ms(text) * self.sample_rate / 1000)
        t = np.arange(total) / self.sample_rate
        return (2000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)

    async def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[AudioChunk]:
        self.requests.append(text)
        await asyncio.sleep(self.ttfb_ms / 1000)
        if self.fail_on is not None and self.fail_on in text:
            raise ProviderError("faketts", "synthesis failed", status=500)
        audio = self.audio(text)
        step = int(self.chunk_ms * self.sample_rate / 1000)
        for off in range(0, len(audio), step):
            yield AudioChunk(audio[off : off + step], self.sample_rate)
            await asyncio.sleep(0)


# ---------------------------------------------------------------------------------------------
# Playout
# ---------------------------------------------------------------------------------------------


class FakePlayoutSink:
    """Real-time playout: audio plays in 20 ms ticks; `write` blocks while more than
    `max_ahead_ms` is queued; a segment is acked (`wait_played`) `ack_delay_ms` after its last
    audio played; `clear()` drops the queue and returns what was heard of the playing segment.
    Like the Plivo writer, it drops later writes into the segment that was open at the clear
    (`dropped_ms`): audio after a clear needs a new segment."""

    def __init__(self, max_ahead_ms: float = 200.0, ack_delay_ms: float = 0.0) -> None:
        self.max_ahead_ms = max_ahead_ms
        self.ack_delay_ms = ack_delay_ms
        self._queue: deque[list[Any]] = deque()  # [segment id, ms left]
        self._writing: str | None = None
        self.written: dict[str, float] = {}
        self.audio: dict[str, list[np.ndarray]] = {}  # what was written, per segment
        self.played: dict[str, float] = {}
        self.ended: set[str] = set()
        self.acked: set[str] = set()
        self.segments: list[str] = []
        self.clears: list[tuple[float, float]] = []  # (time, ms heard of the playing segment)
        self.cleared: set[str] = set()
        self.dropped_ms = 0.0
        self.play_log: list[tuple[float, str]] = []  # (tick end time, segment) per 20 ms
        self.dtmf: list[str] = []
        self._acks: dict[str, asyncio.Future[None]] = {}
        self._space = asyncio.Event()
        self._work = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- PlayoutSink ---------------------------------------------------------------------------
    async def start_segment(self, segment_id: str) -> None:
        assert segment_id not in self.written, f"segment id reused: {segment_id}"
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._playout())
        self._writing = segment_id
        self.written[segment_id] = 0.0
        self.played[segment_id] = 0.0
        self.segments.append(segment_id)

    async def write(self, samples: np.ndarray, sample_rate: int) -> None:
        seg = self._writing
        assert seg is not None, "write outside a segment"
        ms = len(samples) * 1000 / sample_rate
        if seg in self.cleared:
            self.dropped_ms += ms
            return
        if self._queue and self._queue[-1][0] == seg:
            self._queue[-1][1] += ms
        else:
            self._queue.append([seg, ms])
        self.written[seg] += ms
        self.audio.setdefault(seg, []).append(np.array(samples, dtype=np.int16))
        self._work.set()
        while self.queued_ms() > self.max_ahead_ms:
            self._space.clear()
            await self._space.wait()

    async def end_segment(self) -> None:
        seg = self._writing
        assert seg is not None, "end_segment outside a segment"
        self._writing = None
        self.ended.add(seg)
        self._maybe_ack(seg)

    async def wait_played(self, segment_id: str) -> None:
        await asyncio.shield(self._ack(segment_id))

    def played_ms(self, segment_id: str) -> float:
        return self.played.get(segment_id, 0.0)

    async def clear(self) -> float:
        heard = self.played_ms(self._queue[0][0]) if self._queue else 0.0
        self._queue.clear()
        if self._writing is not None:
            self.cleared.add(self._writing)
        self.clears.append((_now(), heard))
        for seg, fut in self._acks.items():  # cleared segments will never play: release waiters
            if not fut.done():
                fut.set_result(None)
                self.acked.add(seg)
        self._space.set()
        return heard

    def is_idle(self) -> bool:
        return not self._queue

    async def send_dtmf(self, digits: str) -> None:
        self.dtmf.append(digits)

    # -- inspection ----------------------------------------------------------------------------
    def queued_ms(self) -> float:
        return sum(q[1] for q in self._queue)

    def samples(self, segment_id: str) -> np.ndarray:
        return np.concatenate(self.audio.get(segment_id) or [np.zeros(0, np.int16)])

    def fully_played(self, segment_id: str) -> bool:
        return self.played[segment_id] >= self.written[segment_id] - 1e-6

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # -- internals -----------------------------------------------------------------------------
    def _ack(self, seg: str) -> asyncio.Future[None]:
        fut = self._acks.get(seg)
        if fut is None:
            fut = self._acks[seg] = asyncio.get_running_loop().create_future()
        return fut

    def _maybe_ack(self, seg: str) -> None:
        if seg not in self.ended or any(q[0] == seg for q in self._queue):
            return
        fut = self._ack(seg)
        if fut.done():
            return

        def resolve() -> None:
            if not fut.done():
                self.acked.add(seg)
                fut.set_result(None)

        asyncio.get_running_loop().call_later(self.ack_delay_ms / 1000, resolve)

    async def _playout(self) -> None:
        while True:
            while not self._queue:
                self._work.clear()
                await self._work.wait()
            await asyncio.sleep(0.02)
            budget = 20.0
            while budget > 1e-9 and self._queue:
                seg, left = self._queue[0]
                take = min(left, budget)
                self._queue[0][1] -= take
                self.played[seg] += take
                budget -= take
                self.play_log.append((_now(), seg))
                if self._queue[0][1] <= 1e-9:
                    self._queue.popleft()
                    self._maybe_ack(seg)
            self._space.set()


# ---------------------------------------------------------------------------------------------
# Harness
# ---------------------------------------------------------------------------------------------


@dataclass
class Harness:
    conv: Conversation
    caller: Caller
    sink: FakePlayoutSink
    stt: FakeSTT
    llm: FakeLLM
    tts: FakeTTS
    vad: EnergyVad
    endpointing: ScriptedEndpointing
    events: list[ev.Event]
    tool_calls: list[Any]
    _arrived: asyncio.Event

    def of(self, type_: str) -> list[Any]:
        return [e for e in self.events if e.type == type_]

    def types(self) -> list[str]:
        return [e.type for e in self.events]

    def states(self) -> list[str]:
        return [e.new_state for e in self.of("agent.state_changed")]

    async def wait_for(self, type_: str, pred: Callable[[Any], bool] = lambda e: True,
                       *, count: int = 1, within: float = 60.0) -> Any:
        """The count-th event of this type matching pred (waits in loop time)."""
        async def find() -> Any:
            while True:
                hits = [e for e in self.of(type_) if pred(e)]
                if len(hits) >= count:
                    return hits[count - 1]
                self._arrived.clear()
                await self._arrived.wait()

        return await asyncio.wait_for(find(), within)

    async def close(self) -> None:
        await self.conv.stop("test_done")
        await self.caller.stop()
        await self.sink.aclose()


async def start_call(
    settings: ConversationSettings | None = None,
    *,
    utterances: list[str] | None = None,
    llm_scripts: list[list[Step]] | None = None,
    eot_script: list[list[float]] | None = None,
    greeting: str | None = None,
    prompt: str = "You are a helpful receptionist.",
    streaming_stt: bool = True,
    stt: FakeSTT | None = None,
    llm: FakeLLM | None = None,
    tts: FakeTTS | None = None,
    sink: FakePlayoutSink | None = None,
    tool_executor: Callable[[Any], Any] | None = None,
    tools: list[Any] | None = None,
    failure_clip: Callable[[], Any] | None = None,
) -> Harness:
    """Build and start a conversation on fakes, with the caller already sending silence."""
    settings = settings or ConversationSettings()
    events: list[ev.Event] = []
    arrived = asyncio.Event()
    tool_calls: list[Any] = []

    def on_event(e: ev.Event) -> None:
        events.append(e)
        arrived.set()

    stt = stt or FakeSTT(utterances or [], streaming=streaming_stt)
    llm = llm or FakeLLM(llm_scripts)
    tts = tts or FakeTTS()
    sink = sink or FakePlayoutSink()
    vad = EnergyVad(settings.vad)
    endpointing = ScriptedEndpointing(settings.turn, eot_script)
    conv = Conversation(
        settings, prompt=prompt, greeting=greeting, vad=vad, endpointing=endpointing, stt=stt,
        llm=llm, tts=tts, sink=sink, on_event=on_event, tool_executor=tool_executor,
        tools=tools, session_id="test", failure_clip=failure_clip,
    )
    caller = Caller(conv)
    h = Harness(conv, caller, sink, stt, llm, tts, vad, endpointing, events, tool_calls,
                arrived)
    await conv.start()
    caller.start()
    return h
