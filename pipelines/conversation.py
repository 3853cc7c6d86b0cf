"""The per-call conversation: who speaks when.

    starting ─► listening ─► thinking ─► speaking ─► listening … ─► ending
                    ▲            │  ▲        │ ▲
                    └────────────┘  └ paused ┘ └ (soft barge-in hold; resumes or commits)

Inputs: 20 ms 16 kHz int16 frames (`push_audio`), DTMF digits (`on_dtmf`), API calls (`say`,
`interrupt`, `inject`, `hangup`, `stop`). Outputs: audio segments into a `PlayoutSink` and typed
events through `on_event`. Providers are reached only through the structural types in
`pipelines.ports`; turn detection through a VAD stream and an end-of-turn decider that the host
injects (so tests can script them).

How a turn flows:
- Every frame goes to the ring buffer (last 8 s, for the end-of-turn model), the VAD and the STT.
  `push_audio` only enqueues: providers never block the transport.
- VAD stop → the end-of-turn decider runs (cancelled if speech resumes). On its decision the STT
  is flushed and its final transcript awaited; an empty turn goes back to listening, anything
  else is committed (`user.turn_completed`) and answered.
- The answer is one *speech* (pipelines/speech.py) produced by `ReplyGenerator` (LLM rounds and
  tools, pipelines/reply.py) and played by `SpeechOutput` (sentences → TTS → playout segments).
- Caller speech while the agent talks (or thinks) holds the agent's audio: the writer stops and
  playout is cleared at once (a transport cannot pause), remembering where the caller stopped
  hearing. `InterruptionPolicy` then decides between a committed interruption (cancel
  LLM/TTS/tools, truncate the assistant message to what was heard) and a false one (re-send the
  audio from where it was cut and carry on).
- Timers: idle re-prompts then goodbye, a hard maximum call duration, and a response watchdog
  that apologises when a committed turn gets no audio in time. The call is never silent without
  an event saying why.
- Provider failures (after the host's fallback chains gave up): an answer lost to them gets the
  apology; `max_failed_replies` of them in a row, an STT that cannot be kept alive, or a TTS that
  cannot speak at all end the call with `failure_goodbye` (for a dead TTS, the clip the host
  pre-rendered) and the reason "provider_error".

Speeches (greeting, answers, `say`, prompts) play one at a time from a bounded queue. Every task
is tracked and cancelled by `stop`; every buffer is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from pipelines import events as ev
from pipelines.audio.frames import SAMPLE_RATE, as_int16
from pipelines.audio.ringbuffer import RingBuffer
from pipelines.context import ChatContext
from pipelines.interruption import BargeFacts, InterruptionPolicy
from pipelines.ports import LLMLike, PlayoutSink, STTLike, STTStreamLike, TranscriptLike, TTSLike
from pipelines.reply import ReplyGenerator, ToolExecutor
from pipelines.sentences import split_sentences
from pipelines.settings import ConversationSettings
from pipelines.speech import INTERRUPTIONS, SpeechHandle, SpeechKind, TurnTiming, turn_metrics
from pipelines.speech_output import SpeechError, SpeechOutput
from pipelines.thinking_audio import ThinkingAudio
from pipelines.transcripts import Mark, TranscriptBuffer
from pipelines.turn.base import EndOfTurnDecision
from pipelines.vad.base import VadEvent, VadStream

log = logging.getLogger(__name__)

State = Literal["starting", "listening", "thinking", "speaking", "paused", "ending"]

TURN_AUDIO_MS = 8000  # what the end-of-turn model looks at
PREROLL_MS = 300  # audio kept before the first speech onset of a turn
INPUT_BACKLOG_FRAMES = 100  # 2 s: beyond this the engine is overloaded and drops the oldest
STT_BACKLOG_FRAMES = 150  # 3 s of audio waiting for a slow STT connection
MAX_QUEUED_SPEECHES = 16
MAX_DTMF_DIGITS = 32
STT_MAX_FAILURES = 3
SINK_CLEAR_TIMEOUT_S = 2.0  # a transport that never confirms a clear must not hang the call
GOODBYE_GRACE_S = 20.0  # longest wait for the current answer to finish before a polite hangup
_FLUSH = object()  # STT queue marker: finalise what was pushed so far
PREFILL_GREETING_WAIT_S = 3.0  # the LLM prefill waits this long at most for the greeting's audio
# End reason when providers failed beyond what their fallbacks could absorb.
PROVIDER_ERROR = "provider_error"


class EndOfTurnDecider(Protocol):
    """pipelines.turn.endpointing.EndpointingPolicy, or a scripted stand-in in tests."""

    async def decide(
        self, get_audio: Callable[[], np.ndarray], silence_ms_at_start: float = 0
    ) -> EndOfTurnDecision: ...


@dataclass(eq=False, slots=True)
class _Barge:
    """One soft barge-in episode: the agent is held while we find out what the caller wants."""

    onset_at: float  # loop time of the speech onset
    mark: Mark  # what had been recognised before the onset
    deadline: float  # loop time at which the hold window runs out
    resolved: asyncio.Future[bool]  # True: the caller's speech is a turn; False: ignore it
    speech_done_ms: float = 0.0  # speech of utterances that ended during the hold
    awaiting_final_seq: int | None = None  # a final transcript was requested after this count
    settling: bool = False
    timer: asyncio.Task[None] | None = field(default=None, repr=False)
    # The agent's audio cut at the hold (None: it was not talking yet), and when it went silent.
    output: SpeechOutput | None = field(default=None, repr=False)
    cut: asyncio.Task[None] | None = field(default=None, repr=False)
    silenced_at: float | None = None


class Conversation:
    def __init__(
        self,
        settings: ConversationSettings,
        *,
        prompt: str,
        greeting: str | None,
        vad: VadStream,
        endpointing: EndOfTurnDecider | None,
        stt: STTLike,
        llm: LLMLike,
        tts: TTSLike,
        sink: PlayoutSink,
        on_event: ev.EventCallback,
        tool_executor: ToolExecutor | None = None,
        tools: list[Any] | None = None,
        voice: str | None = None,
        language: str = "en-US",
        session_id: str = "",
        playout_ahead_ms: float | None = 250.0,
        failure_clip: Callable[[], tuple[np.ndarray, int] | None] | None = None,
    ) -> None:
        self.settings = settings
        self.session_id = session_id
        self.context = ChatContext(prompt, settings.max_context_items)
        self._greeting = (greeting or "").strip()
        self._vad = vad
        self._endpointing = endpointing
        self._stt = stt
        self._tts = tts
        self._sink = sink
        self._on_event = on_event
        self._voice = voice
        self._language = language
        # Audio handed to the sink but not yet played is capped at this, so a barge-in hold
        # silences the agent quickly even if the sink buffers more on its own (None: trust the
        # sink's backpressure). Slightly above the transport's own send-ahead is right.
        self._playout_ahead_ms = playout_ahead_ms
        self._policy = InterruptionPolicy(settings.interruption)
        self._llm = llm
        self._tools = list(tools) if tools else None
        self._replies = ReplyGenerator(
            llm=llm, context=self.context, emit=self._emit, clock=self._now,
            tools=self._tools, tool_executor=tool_executor,
            max_tool_rounds=settings.max_tool_rounds, tool_timeout_s=settings.tool_timeout_s,
            stop_requested=lambda: self._ending,
        )
        self.state: State = "starting"
        self._loop: asyncio.AbstractEventLoop | None = None
        # Audio in.
        self._in: deque[np.ndarray] = deque(maxlen=INPUT_BACKLOG_FRAMES)
        self._in_ready = asyncio.Event()
        self._stt_q: deque[Any] = deque(maxlen=STT_BACKLOG_FRAMES)
        self._stt_ready = asyncio.Event()
        self._stt_stream: STTStreamLike | None = None
        self._ring = RingBuffer(SAMPLE_RATE * (TURN_AUDIO_MS + PREROLL_MS) // 1000)
        self._stream_ms = 0.0
        self.dropped_frames = 0
        self._vad_failed = False
        # The caller's turn in progress.
        self._words = TranscriptBuffer()
        self._user_speaking = False
        self._utterance_start_ms = 0.0
        self._turn_start_ms: float | None = None
        self._final_seq_at_stop = 0
        self._ignore_utterance = False
        self._eou_task: asyncio.Task[None] | None = None
        self._barge: _Barge | None = None
        self._dtmf_digits: list[str] = []
        self._dtmf_task: asyncio.Task[None] | None = None
        self._suspended = 0  # turns_suspended() depth: caller speech is input, not turns
        # Agent speech.
        self._gate = asyncio.Event()  # open: speech may flow to the sink; closed: hold
        self._gate.set()
        self._queue: deque[SpeechHandle] = deque()
        self._queue_ready = asyncio.Event()
        self._current: SpeechHandle | None = None
        self._segment_ids = itertools.count(1)
        self._interjections: set[SpeechHandle] = set()
        self._played_waiters: dict[str, asyncio.Future[None]] = {}
        self._thinking = ThinkingAudio(sink) if settings.thinking_audio else None
        self._agent_audio = asyncio.Event()  # set once the agent's first audio went out
        # Lifecycle.
        self._tasks: set[asyncio.Task[Any]] = set()
        self._core: set[asyncio.Task[Any]] = set()
        self._idle_task: asyncio.Task[None] | None = None
        self._idle_prompts = 0
        self._ending = False
        self._ended: asyncio.Future[str] | None = None
        self._shutting_down: asyncio.Task[None] | None = None
        # Provider failures: answers lost in a row, STT errors (and how many there were when
        # the caller's current turn began), TTS known to be down, and the pre-rendered
        # `failure_goodbye` to say when it is (the host renders it while the TTS still works).
        self._failed_replies = 0
        self._stt_errors = 0
        self._stt_errors_at_turn = 0
        self._tts_down = False
        self._failure_clip = failure_clip

    # =========================================================================================
    # Public API
    # =========================================================================================
    async def start(self) -> None:
        """Open the STT stream, start the internal tasks and (if configured) greet."""
        if self._loop is not None:
            raise RuntimeError("conversation already started")
        self._loop = asyncio.get_running_loop()
        self._ended = self._loop.create_future()
        try:
            self._stt_stream = await self._stt.open(SAMPLE_RATE, self._language)
        except Exception as exc:
            self._emit_error("stt", exc)
            self._ended.set_result("error")
            raise
        self._core.add(self._spawn(self._audio_loop(), "audio"))
        self._core.add(self._spawn(self._stt_feed_loop(), "stt-feed"))
        self._core.add(self._spawn(self._transcript_loop(), "stt-events"))
        self._core.add(self._spawn(self._speech_loop(), "speech"))
        self._spawn(self._max_duration_timer(), "max-duration")
        if self._greeting:
            self._enqueue(self._speech("greeting", text=self._greeting))
        else:
            self._set_state("listening")
            self._arm_idle()
        if getattr(self._llm, "prefill", None) is not None:
            self._spawn(self._prefill_llm(), "llm-prefill")

    async def push_audio(self, frame: np.ndarray) -> None:
        """One 20 ms frame of caller audio (16 kHz mono int16). Never waits on providers."""
        if self._loop is None or self._ending:
            return
        if len(self._in) == INPUT_BACKLOG_FRAMES:
            self.dropped_frames += 1  # the deque drops the oldest frame
        self._in.append(frame if frame.dtype == np.int16 else as_int16(frame))
        self._in_ready.set()

    def on_dtmf(self, digit: str) -> None:
        """A keypad digit from the caller: an event, and (after a short gap) a user turn."""
        digit = str(digit).strip()
        if self._loop is None or self._ending or not digit:
            return
        self._emit(ev.UserDtmf, digit=digit)
        if len(self._dtmf_digits) < MAX_DTMF_DIGITS:
            self._dtmf_digits.append(digit)
        self._cancel_idle()
        cur = self._current
        if cur is not None and cur.interruptible and cur.stop_reason is None:
            self._drop_queued(interruptible_only=True)
            self._spawn(self._stop_speech(cur, "dtmf", clear=True), "dtmf-interrupt")
        self._cancel(self._dtmf_task)
        delay = 0.0 if digit == "#" else self.settings.dtmf_inter_digit_ms / 1000.0
        self._dtmf_task = self._spawn(self._dtmf_commit(delay), "dtmf")

    def say(
        self,
        content: str | np.ndarray,
        *,
        sample_rate: int = SAMPLE_RATE,
        transcript: str | None = None,
        interruptible: bool = True,
        add_to_context: bool = True,
    ) -> SpeechHandle:
        """Speak `content` (text via TTS, or int16 audio at `sample_rate` with an optional
        `transcript`) after whatever is playing now. Returns an awaitable, cancellable handle.

        While the current answer waits on a tool call, text is spoken at once as part of that
        answer (a hold line, a tool's prompt or goodbye) instead of queued behind it: queued, it
        would wait for the tool, and a tool awaiting its own words would never finish. Such an
        interjection is heard and truncated like the answer's own words but stays out of the
        LLM context; barge-in stops it with the answer (`cancel()` has no effect on it)."""
        if self._loop is None or self._ended is None or self._ended.done():
            raise RuntimeError("conversation is not running")
        if self._ending:
            raise RuntimeError("conversation is ending")
        if isinstance(content, str):
            if not content.strip():
                raise ValueError("nothing to say")
            cur = self._current
            if (cur is not None and cur.kind == "reply" and cur.in_tools
                    and cur.stop_reason is None and cur.output is not None):
                return self._interject(cur, content, interruptible)
            handle = self._speech("say", text=content, interruptible=interruptible,
                                  add_to_context=add_to_context)
        else:
            audio = as_int16(content)
            if not len(audio) or sample_rate <= 0:
                raise ValueError("audio must be non-empty with a positive sample rate")
            handle = self._speech("say", text=transcript, audio=audio, sample_rate=sample_rate,
                                  interruptible=interruptible, add_to_context=add_to_context)
        self._enqueue(handle)
        return handle

    def interrupt(self, force: bool = False) -> SpeechHandle | None:
        """Stop the agent now (only interruptible speech unless `force`) and drop what is queued.
        Returns the interrupted speech (await it to know it has stopped), or None."""
        if self._loop is None:
            return None
        self._drop_queued(interruptible_only=not force)
        cur = self._current
        if cur is None or cur.done() or cur.stop_reason is not None:
            return None
        if not cur.interruptible and not force:
            return None
        self._spawn(self._stop_speech(cur, "interrupt", clear=True), "interrupt")
        return cur

    def inject(self, text: str, role: Literal["system", "user", "assistant"] = "system") -> None:
        """Add context for the next turn (e.g. data looked up by the host); no response."""
        self.context.inject(text, role)

    @contextlib.contextmanager
    def turns_suspended(self) -> Iterator[None]:
        """While inside, the caller's speech is input for the host (digits being collected,
        an answering-machine check), not conversation: it neither barges in nor becomes a
        turn, and no idle prompt fires. VAD and transcript events still flow (finals are
        requested promptly at each pause); the words are dropped when the block ends."""
        self._suspended += 1
        b = self._barge
        if b is not None:
            self._end_barge(b, False)  # a hold that began just before: not an interruption
        self._cancel(self._eou_task)
        try:
            yield
        finally:
            self._suspended -= 1
            if not self._suspended and not self._ending and self._loop is not None:
                self._words.clear()
                # Late results and the rest of an utterance in progress belong to the input.
                self._words.discarding = True
                self._ignore_utterance = self._user_speaking
                self._turn_start_ms = None
                if self._current is None and not self._queue:
                    self._arm_idle()

    def hangup(self, reason: str = "agent_hangup", *, goodbye: str | None = None,
               interrupt: bool = False) -> None:
        """End the call politely: let the current speech finish (or cut it if `interrupt`),
        say `goodbye` if given, then end with `reason` (see `wait_ended`)."""
        if self._loop is None or self._ending:
            return
        self._begin_ending()
        self._spawn(self._end_gracefully(reason, goodbye, interrupt), "hangup")

    async def stop(self, reason: str = "stopped") -> None:
        """End now (the caller hung up, the host is shutting down). Idempotent."""
        if self._loop is None:
            return
        await self._shutdown(reason)

    async def wait_ended(self) -> str:
        """Wait until the conversation has ended; returns the reason."""
        if self._ended is None:
            raise RuntimeError("conversation not started")
        return await asyncio.shield(self._ended)

    @property
    def ended(self) -> bool:
        return self._ended is not None and self._ended.done()

    # =========================================================================================
    # Audio in: VAD, STT, transcripts
    # =========================================================================================
    async def _audio_loop(self) -> None:
        while True:
            while not self._in:
                self._in_ready.clear()
                await self._in_ready.wait()
            frame = self._in.popleft()
            self._ring.append(frame)
            self._queue_stt(frame)
            event: VadEvent | None = None
            try:
                event = await self._vad.process(frame)
            except Exception as exc:
                if not self._vad_failed:  # report once; a broken VAD must not kill the call
                    self._vad_failed = True
                    self._emit_error("vad", exc)
            self._stream_ms += len(frame) * 1000.0 / SAMPLE_RATE
            if event is not None:
                self._on_vad(event)
            if self._barge is not None:
                self._evaluate_barge()

    def _queue_stt(self, item: Any) -> None:
        if len(self._stt_q) == STT_BACKLOG_FRAMES:
            self.dropped_frames += 1
        self._stt_q.append(item)
        self._stt_ready.set()

    async def _stt_feed_loop(self) -> None:
        # Frames and flush requests share one queue so a flush covers every frame before it.
        failures = 0
        while True:
            while not self._stt_q:
                self._stt_ready.clear()
                await self._stt_ready.wait()
            item = self._stt_q.popleft()
            stream = self._stt_stream
            if stream is None:
                continue
            try:
                if item is _FLUSH:
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
        failures = 0
        while True:
            stream = self._stt_stream
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
            if self._ending:
                return
            failures += 1
            self._stt_errors += 1
            if error is not None:
                self._emit_error("stt", error)
            else:
                self._emit(ev.SessionError, code="stt_stream_ended", stage="stt",
                           message="the STT stream ended")
            if failures > STT_MAX_FAILURES:
                self._providers_exhausted("stt", "speech recognition keeps failing")
                return
            await asyncio.sleep(0.2 * 2**failures)
            try:
                new = await self._stt.open(SAMPLE_RATE, self._language)
            except Exception as exc:
                self._emit_error("stt", exc)
                continue
            self._stt_stream = new
            try:
                await stream.aclose()
            except Exception as exc:
                log.debug("closing the failed STT stream: %r", exc)

    def _on_transcript(self, t: TranscriptLike) -> None:
        text = (t.text or "").strip()
        self._emit(ev.UserTranscription, text=text, is_final=bool(t.is_final),
                   confidence=float(getattr(t, "confidence", 1.0)))
        if not self._ending:
            self._words.add(text, bool(t.is_final))
        if self._barge is not None:
            self._evaluate_barge()

    def _turn_audio(self) -> np.ndarray:
        """The current turn's audio for the end-of-turn model: ≤ 8 s, from just before the
        turn's first speech onset up to now."""
        start = self._turn_start_ms if self._turn_start_ms is not None else 0.0
        start = max(start - PREROLL_MS, self._stream_ms - TURN_AUDIO_MS)
        n = int((self._stream_ms - start) * SAMPLE_RATE / 1000)
        return self._ring.last(n)

    # =========================================================================================
    # Caller speech: VAD edges, end of turn
    # =========================================================================================
    def _on_vad(self, e: VadEvent) -> None:
        now = self._now()
        # VAD events are backdated to the true speech edge; turn that into loop time.
        edge = now - max(0.0, self._stream_ms - e.at_ms) / 1000.0
        if e.kind == "start":
            self._on_speech_start(e, edge)
        else:
            self._on_speech_stop(e, edge, now)

    def _on_speech_start(self, e: VadEvent, edge: float) -> None:
        self._user_speaking = True
        self._utterance_start_ms = e.at_ms
        self._words.discarding = False
        self._ignore_utterance = False
        self._cancel(self._eou_task)  # the caller carries on: not the end of the turn
        self._cancel_idle()
        if self._turn_start_ms is None:
            self._turn_start_ms = e.at_ms
            self._stt_errors_at_turn = self._stt_errors
        self._emit(ev.UserSpeechStarted, mono=edge)
        if self._ending:
            return
        b = self._barge
        if b is not None:
            b.awaiting_final_seq = None  # talking again: wait for more speech, not a final
        elif self._can_hold():
            self._begin_barge(edge)

    def _on_speech_stop(self, e: VadEvent, edge: float, now: float) -> None:
        self._user_speaking = False
        self._final_seq_at_stop = self._words.seq
        self._emit(ev.UserSpeechStopped, speech_ms=e.speech_ms, mono=edge)
        if self._ending:
            return
        if self._suspended:
            self._queue_stt(_FLUSH)  # the host reads the words: have them finalised now
            return
        if self._ignore_utterance:
            # The rest of an utterance already judged a false interruption ("yeah yeah").
            self._ignore_utterance = False
            self._reset_turn_if_empty()
            self._arm_idle()
            return
        b = self._barge
        if b is not None:
            b.speech_done_ms += e.speech_ms
            if not self._policy.words_qualify(self._words.text_since(b.mark)):
                # Long enough maybe, but no qualifying words yet: ask the STT to finalise.
                b.awaiting_final_seq = self._words.seq
                b.deadline = max(b.deadline,
                                 now + self.settings.turn.stt_final_timeout_ms / 1000.0)
            self._evaluate_barge()
            if self._barge is b and b.awaiting_final_seq is not None:
                self._queue_stt(_FLUSH)
            if b.resolved.done() and not b.resolved.result():
                return  # a false interruption: no turn to end
        silence_ms = max(0.0, self._stream_ms - e.at_ms)
        self._eou_task = self._spawn(self._end_of_turn(edge, silence_ms), "end-of-turn")

    async def _end_of_turn(self, speech_end_at: float, silence_ms: float) -> None:
        if self._endpointing is None:
            decision = EndOfTurnDecision("vad", None, 0.0)
        else:
            decision = await self._endpointing.decide(self._turn_audio, silence_ms)
        eou_at = self._now()
        b = self._barge
        if b is not None and not await asyncio.shield(b.resolved):
            return
        if self._ending or self._suspended:
            return
        # A final transcript is required: flush unless one already arrived after the speech.
        if self._words.interim or self._words.seq <= self._final_seq_at_stop:
            seq = self._words.seq
            self._queue_stt(_FLUSH)
            await self._words.wait_final(seq, self.settings.turn.stt_final_timeout_ms / 1000.0)
        text = self._words.text()
        final_at = self._now()
        if self._suspended:
            return
        if not text and self._stt_errors > self._stt_errors_at_turn:
            # The caller spoke but the STT failed (every option) before it heard them: say so
            # rather than leave them waiting for an answer that will never come.
            self._reset_turn()
            self._reply_lost("stt")
            return
        if not text:
            # Noise, or words the STT could not make out: nothing to answer.
            self._reset_turn()
            if self._current is None and not self._queue:
                self._set_state("listening")
            self._arm_idle()
            return
        self._commit_user_turn(text, decision.trigger, decision.probability,
                               speech_end_at, eou_at, final_at)

    def _commit_user_turn(self, text: str, trigger: str, probability: float | None,
                          speech_end_at: float, eou_at: float, final_at: float) -> None:
        turn = TurnTiming(uuid.uuid4().hex[:16], text, trigger, speech_end_at, eou_at, final_at)
        self._reset_turn()
        self._idle_prompts = 0
        self._emit(ev.UserTurnCompleted, turn_id=turn.id, text=text, trigger=trigger,
                   eou_probability=probability)
        self.context.add_user(text)
        self._enqueue(self._speech("reply", turn=turn))

    def _reset_turn(self) -> None:
        self._words.clear()
        self._turn_start_ms = self._utterance_start_ms if self._user_speaking else None

    def _reset_turn_if_empty(self) -> None:
        if self._words.empty and not self._user_speaking:
            self._turn_start_ms = None

    async def _dtmf_commit(self, delay: float) -> None:
        await asyncio.sleep(delay)
        digits = "".join(self._dtmf_digits)
        self._dtmf_digits.clear()
        if not digits or self._ending:
            return
        self._cancel(self._eou_task)
        now = self._now()
        text = " ".join(p for p in (self._words.text(), f"[DTMF {digits}]") if p)
        self._commit_user_turn(text, "dtmf", None, now, now, now)

    # =========================================================================================
    # Soft barge-in
    # =========================================================================================
    def _can_hold(self) -> bool:
        cur = self._current
        return (
            self.settings.interruption.enabled
            and cur is not None
            and cur.interruptible
            and cur.stop_reason is None
            and not self._ending
            and not self._suspended
        )

    def _begin_barge(self, onset_at: float) -> None:
        window_s = self.settings.interruption.false_interruption_timeout_ms / 1000.0
        b = _Barge(onset_at=onset_at, mark=self._words.mark(), deadline=onset_at + window_s,
                   resolved=self._require_loop().create_future())
        self._barge = b
        self._gate.clear()  # hold: the speech writer stops feeding the sink
        cur = self._current
        out = cur.output if cur is not None else None
        if out is not None and out.audio_started:
            b.output = out
            b.cut = self._spawn(self._cut_playout(b, out), "barge-cut")
        if self.state == "speaking":
            self._set_state("paused")
        b.timer = self._spawn(self._barge_timer(b), "barge-timer")
        self._evaluate_barge()

    async def _cut_playout(self, b: _Barge, out: SpeechOutput) -> None:
        """Make the hold audible now rather than after what is queued at the far end has
        played: clear playout, remembering where the caller stopped hearing (for a resume)."""
        try:
            await asyncio.wait_for(out.cut(), SINK_CLEAR_TIMEOUT_S)
        except Exception as exc:
            self._emit_error("transport", exc)
        b.silenced_at = self._now()

    def _evaluate_barge(self) -> None:
        b = self._barge
        if b is None or b.settling:
            return
        speech_ms = b.speech_done_ms
        if self._user_speaking:
            speech_ms += max(0.0, self._stream_ms - self._utterance_start_ms)
        text = self._words.text_since(b.mark)
        awaiting = b.awaiting_final_seq is not None and self._words.seq <= b.awaiting_final_seq
        verdict = self._policy.decide(BargeFacts(
            speech_ms=speech_ms, speaking=self._user_speaking, text=text,
            window_expired=self._now() >= b.deadline, awaiting_final=awaiting,
        ))
        if verdict == "commit":
            b.settling = True
            self._spawn(self._commit_barge(b), "barge-commit")
        elif verdict == "resume":
            self._resume_after_false_interruption(b, speech_ms, text)

    async def _barge_timer(self, b: _Barge) -> None:
        while self._barge is b and not b.settling:
            delay = b.deadline - self._now()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            self._evaluate_barge()
            return

    async def _commit_barge(self, b: _Barge) -> None:
        cur = self._current
        try:
            if cur is not None and cur.interruptible and cur.stop_reason is None:
                self._drop_queued(interruptible_only=True)
                await self._stop_speech(cur, "barge_in", clear=True, barge=b)
        finally:
            self._end_barge(b, True)
            if self._current is None and not self._ending:
                self._set_state("listening")

    def _resume_after_false_interruption(self, b: _Barge, speech_ms: float, text: str) -> None:
        # What was said since the onset was not a turn: forget it, including results still in
        # flight for the same utterance (dropped until the caller speaks again).
        self._words.drop_since(b.mark)
        self._words.discarding = True
        if self._user_speaking:
            self._ignore_utterance = True
        self._reset_turn_if_empty()
        self._end_barge(b, False)
        cur = self._current
        if cur is not None and cur.output is not None and cur.output.audio_started:
            self._set_state("speaking")
        elif cur is None:
            self._set_state("listening")
        self._emit(ev.AgentFalseInterruption, speech_ms=speech_ms, text=text)
        if cur is None:
            self._arm_idle()

    def _end_barge(self, b: _Barge, is_turn: bool) -> None:
        if self._barge is b:
            self._barge = None
        b.settling = True
        self._cancel(b.timer)
        if not b.resolved.done():
            b.resolved.set_result(is_turn)
        out, b.output = b.output, None
        cur = self._current
        if (out is not None and cur is not None and cur.output is out
                and cur.stop_reason is None and not cur.done()):
            # The speech goes on (a false interruption, or it could no longer be interrupted):
            # first the audio the hold cut away, then the writer carries on.
            self._spawn(self._resume_playout(b, out), "barge-resume")
        else:
            self._gate.set()

    async def _resume_playout(self, b: _Barge, out: SpeechOutput) -> None:
        try:
            if b.cut is not None:
                await asyncio.wait([b.cut])
            await out.resume()
        except Exception as exc:
            self._emit_error("transport", exc)
        finally:
            if self._barge is None:  # unless a new hold began meanwhile
                self._gate.set()

    # =========================================================================================
    # Agent speech
    # =========================================================================================
    def _speech(self, kind: SpeechKind, **kwargs: Any) -> SpeechHandle:
        kwargs.setdefault("interruptible", self.settings.interruption.enabled)
        return SpeechHandle(kind, on_cancel=self._cancel_speech, **kwargs)

    def _enqueue(self, handle: SpeechHandle, *, front: bool = False) -> None:
        if len(self._queue) >= MAX_QUEUED_SPEECHES:
            raise RuntimeError("too many queued speeches")
        if front:
            self._queue.appendleft(handle)
        else:
            self._queue.append(handle)
        self._cancel_idle()
        self._queue_ready.set()

    def _drop_queued(self, *, interruptible_only: bool) -> None:
        keep: deque[SpeechHandle] = deque()
        for h in self._queue:
            if interruptible_only and not h.interruptible:
                keep.append(h)
            else:
                h.stop_reason = "cancelled"
                h.resolve()
        self._queue = keep

    def _cancel_speech(self, handle: SpeechHandle) -> None:
        if handle.done():
            return
        if handle in self._queue:
            self._queue.remove(handle)
            handle.stop_reason = "cancelled"
            handle.resolve()
        elif handle is self._current and handle.stop_reason is None:
            self._spawn(self._stop_speech(handle, "cancelled", clear=True), "cancel-speech")

    async def _speech_loop(self) -> None:
        while True:
            while not self._queue:
                self._queue_ready.clear()
                await self._queue_ready.wait()
            speech = self._queue.popleft()
            if speech.done():
                continue
            self._current = speech
            speech.watch_from = self._now()
            if speech.kind == "reply":
                self._set_state("thinking")
                self._spawn(self._watchdog(speech), "watchdog")
                if self._thinking is not None:
                    self._thinking.start()
            task = self._spawn(self._run_speech(speech), f"speech-{speech.id}")
            speech.task = task
            await asyncio.wait([task])
            if speech.stopped is not None:
                await asyncio.shield(speech.stopped)  # the stopper's bookkeeping
            if self._thinking is not None:
                await self._thinking.stop()
            self._current = None
            self._finish_speech(speech)
            if not self._queue and not self._ending:
                if self._barge is None:
                    self._set_state("listening")
                self._arm_idle()

    async def _prefill_llm(self) -> None:
        """Let an LLM that offers `prefill` (a local one with a prompt cache) evaluate the
        system prompt and greeting while the greeting plays and the caller has not spoken yet,
        so the first answer starts as fast as later ones. Only an optimisation: errors are
        logged, never reported as call errors."""
        messages = self.context.messages()
        if self._greeting:
            # As `_play_fixed` will have recorded it by the time the caller's turn is answered.
            messages.append({"role": "assistant", "content": self._greeting})
            # Not before the greeting is audible: on a small machine the prefill competes for
            # the CPU with the greeting's synthesis, and the greeting plays for seconds anyway.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._agent_audio.wait(), PREFILL_GREETING_WAIT_S)
        try:
            await self._llm.prefill(messages, self._tools)  # type: ignore[attr-defined]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("LLM prefill failed: %r", exc)

    async def _run_speech(self, speech: SpeechHandle) -> None:
        output = SpeechOutput(
            self._sink, self._tts, gate=self._gate, voice=self._voice,
            next_segment_id=lambda: f"{self.session_id or 'seg'}-{next(self._segment_ids)}",
            on_segment_started=self._on_segment_started,
            on_segment_played=self._on_segment_played,
            before_first_audio=self._thinking.stop if self._thinking else None,
            max_sentences=0,  # bounded by the LLM's answer; never block the LLM stream
            max_ahead_ms=self._playout_ahead_ms,
        )
        speech.output = output
        try:
            if speech.kind == "reply":
                await self._replies.run(speech, output)
            else:
                await self._play_fixed(speech, output)
        except asyncio.CancelledError:
            raise
        except SpeechError as exc:
            self._speech_failed(speech, exc.stage, exc.cause)
        except Exception as exc:
            log.exception("speech %s failed", speech.id)
            self._speech_failed(speech, "engine", exc)

    async def _play_fixed(self, speech: SpeechHandle, output: SpeechOutput) -> None:
        part = speech.new_part()
        text = speech.source_text
        if speech.add_to_context and text:
            part.item = self.context.add_assistant(text)
        run = asyncio.create_task(output.run(), name=f"output-{speech.id}")
        try:
            if speech.audio is not None:
                await output.add_audio(speech.audio, speech.sample_rate, text, part.index)
            else:
                for sentence in split_sentences(text):
                    await output.add_text(sentence, part.index)
            await output.close()
            await run
        finally:
            if not run.done():
                run.cancel()
            await asyncio.gather(run, return_exceptions=True)

    def _on_segment_played(self, seg: Any) -> None:
        self._emit(ev.AgentSpeechCompleted, segment_id=seg.id, text=seg.text)
        waiter = self._played_waiters.pop(seg.id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _interject(self, cur: SpeechHandle, text: str, interruptible: bool) -> SpeechHandle:
        handle = self._speech("say", text=text, interruptible=interruptible,
                              add_to_context=False)
        self._interjections.add(handle)
        self._spawn(self._play_interjection(cur, handle), f"interject-{handle.id}")
        return handle

    async def _play_interjection(self, cur: SpeechHandle, handle: SpeechHandle) -> None:
        """Speak `handle`'s text inside the answer `cur`; resolve once played or cut off."""
        out = cur.output
        assert out is not None
        was_interruptible = cur.interruptible
        if not handle.interruptible:
            cur.interruptible = False  # e.g. a goodbye: the caller cannot talk over it
        waiters: dict[str, asyncio.Future[None]] = {}
        try:
            part = cur.new_part()
            part.in_context = False
            for sentence in split_sentences(handle.source_text):
                seg = await out.add_text(sentence, part.index)
                if seg is not None:
                    waiters[seg.id] = self._played_waiters[seg.id] = \
                        self._require_loop().create_future()
            if waiters:
                played = asyncio.ensure_future(asyncio.gather(*waiters.values()))
                ended = asyncio.ensure_future(cur.wait())
                try:
                    await asyncio.wait([played, ended], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for t in (played, ended):
                        t.cancel()
            if all(w.done() for w in waiters.values()):
                handle.heard_text = handle.source_text
            else:
                handle.stop_reason = cur.stop_reason or "cancelled"
        except RuntimeError:
            # The answer closed its output in the same instant (its tool just finished): the
            # words are moot now; report them as not said.
            handle.stop_reason = "cancelled"
            log.debug("interjection %s arrived after its answer ended", handle.id)
        finally:
            if not handle.interruptible and cur.stop_reason is None:
                cur.interruptible = was_interruptible
            for seg_id in waiters:
                self._played_waiters.pop(seg_id, None)
            self._interjections.discard(handle)
            handle.resolve()

    def _on_segment_started(self, seg: Any) -> None:
        self._agent_audio.set()
        if self.state in ("starting", "thinking", "listening") and self._barge is None:
            self._set_state("speaking")
        self._emit(ev.AgentSpeechStarted, segment_id=seg.id, text=seg.text)

    async def _stop_speech(self, speech: SpeechHandle, reason: str, *, clear: bool,
                           barge: _Barge | None = None) -> None:
        """Stop the current speech: hold, cancel its work, clear playout, then record what the
        caller heard (context truncation) and report it."""
        if speech.done() or speech.stop_reason is not None:
            return
        speech.stop_reason = reason
        speech.stopped = self._require_loop().create_future()
        try:
            self._gate.clear()
            if speech.task is not None and not speech.task.done():
                speech.task.cancel()
                await asyncio.wait([speech.task])
            out = speech.output
            if barge is not None and barge.cut is not None:
                await asyncio.wait([barge.cut])  # the hold's clear may still be under way
            if clear and out is not None and out.audio_started:
                try:
                    # A no-op when the hold already cleared playout and nothing played since.
                    await asyncio.wait_for(out.stop_audio(), SINK_CLEAR_TIMEOUT_S)
                except Exception as exc:
                    self._emit_error("transport", exc)
            if barge is not None:
                # Onset → the caller stopped hearing the agent (the clear at the hold, if any).
                silenced_at = barge.silenced_at if barge.silenced_at is not None else self._now()
                speech.barge_in_ms = round((silenced_at - barge.onset_at) * 1000.0, 1)
            speech.account_heard(self.context)
            if reason in INTERRUPTIONS:
                heard, full = speech.heard_text, speech.text
                cut = full[len(heard):].strip() if full.startswith(heard) else full
                self._emit(ev.AgentSpeechInterrupted,
                           segment_id=out.current_segment_id() if out else "",
                           heard_text=heard, interrupted_text=cut,
                           barge_in_ms=speech.barge_in_ms or 0.0)
        finally:
            if self._barge is None:
                self._gate.set()
            speech.stopped.set_result(None)

    def _speech_failed(self, speech: SpeechHandle, stage: str, exc: BaseException) -> None:
        speech.error = stage
        self._emit_error(stage, exc)
        # Audio already handed to the sink still plays; keep exactly that in the context.
        speech.account_heard(self.context, assume_written_plays=True)
        if stage == "tts":
            # Every TTS option has just failed: an apology through the same TTS would only
            # add silence. The agent cannot talk any more; end the call, explaining why.
            self._tts_down = True
            self._providers_exhausted("tts", "no TTS provider could speak")
        elif speech.kind not in ("apology", "goodbye") and not self._ending:
            self._reply_lost(stage)

    def _reply_lost(self, stage: str) -> None:
        """A provider failure cost the caller an answer: apologise (they may try again), or
        after `max_failed_replies` in a row end the call."""
        if self._ending:
            return
        self._failed_replies += 1
        if self._failed_replies >= self.settings.max_failed_replies:
            self._providers_exhausted(
                stage, f"{self._failed_replies} answers in a row lost to provider failures")
        else:
            self._enqueue_apology()

    def _providers_exhausted(self, stage: str, why: str) -> None:
        """End the call: say `failure_goodbye` (pre-rendered if the TTS is down), then hang up
        with reason "provider_error"."""
        if self._ending:
            return
        self._emit(ev.SessionError, code="providers_exhausted", stage=stage,
                   message=f"{why}; ending the call")
        self.hangup(PROVIDER_ERROR, goodbye=self.settings.failure_goodbye)

    def _enqueue_apology(self) -> None:
        try:
            self._enqueue(self._speech("apology", text=self.settings.apology), front=True)
        except RuntimeError:
            log.warning("speech queue full: apology dropped")

    def _finish_speech(self, speech: SpeechHandle) -> None:
        out = speech.output
        if speech.stop_reason is None and speech.error is None and out is not None:
            speech.heard_text = out.text()
        if speech.kind == "reply" and speech.error is None and out is not None \
                and out.audio_started:
            self._failed_replies = 0  # the providers answered again
        turn = speech.turn
        if turn is not None:
            self._emit(ev.TurnCompleted, turn_id=turn.id, user_text=turn.user_text,
                       agent_text=speech.text, heard_text=speech.heard_text,
                       interrupted=speech.interrupted)
            self._emit(ev.TurnMetrics, turn_id=turn.id, **turn_metrics(turn, out))
        speech.resolve()

    # =========================================================================================
    # Timers: watchdog, idle, max duration
    # =========================================================================================
    async def _watchdog(self, speech: SpeechHandle) -> None:
        timeout = self.settings.response_timeout_s
        while True:
            if speech.done() or speech.stop_reason is not None:
                return
            if speech.output is not None and speech.output.audio_started:
                return
            if speech.in_tools or self._barge is not None:
                # Waiting on a tool (bounded by tool_timeout_s) or holding for the caller is
                # not a provider stall; the clock restarts when that wait ends.
                await asyncio.sleep(min(0.25, timeout))
                continue
            remaining = speech.watch_from + timeout - self._now()
            if remaining > 0:
                await asyncio.sleep(remaining)
                continue
            break
        self._emit(ev.SessionError, code="response_timeout", stage="watchdog",
                   message=f"no agent audio {timeout:g}s after the caller's turn")
        if self._ending:
            return
        self._reply_lost("watchdog")
        await self._stop_speech(speech, "watchdog", clear=False)

    def _arm_idle(self) -> None:
        self._cancel_idle()
        if self._ending or self._loop is None or self._user_busy():
            return
        self._idle_task = self._spawn(self._idle_timer(), "idle")

    def _cancel_idle(self) -> None:
        self._cancel(self._idle_task)
        self._idle_task = None

    def _user_busy(self) -> bool:
        return bool(
            self._user_speaking
            or (self._eou_task is not None and not self._eou_task.done())
            or self._barge is not None
            or not self._words.empty
            or self._dtmf_digits
            or self._suspended > 0
        )

    async def _idle_timer(self) -> None:
        idle = self.settings.idle
        await asyncio.sleep(idle.timeout_s)
        if self._ending or self._current is not None or self._queue or self._user_busy():
            return
        self._idle_task = None
        if self._idle_prompts < idle.max_prompts:
            self._idle_prompts += 1
            self._emit(ev.UserIdle, prompts_sent=self._idle_prompts)
            self._enqueue(self._speech("idle", text=idle.prompt))
        else:
            self._emit(ev.UserIdle, prompts_sent=self._idle_prompts)
            self.hangup("idle", goodbye=idle.goodbye)

    async def _max_duration_timer(self) -> None:
        await asyncio.sleep(self.settings.max_call_duration_s)
        self.hangup("max_duration", goodbye=self.settings.max_duration_goodbye, interrupt=True)

    # =========================================================================================
    # Ending
    # =========================================================================================
    def _begin_ending(self) -> None:
        self._ending = True
        self._set_state("ending")
        for t in (self._idle_task, self._eou_task, self._dtmf_task):
            self._cancel(t)
        b = self._barge
        if b is not None:
            self._end_barge(b, False)

    async def _end_gracefully(self, reason: str, goodbye: str | None, interrupt: bool) -> None:
        self._drop_queued(interruptible_only=False)
        cur = self._current
        if cur is not None and not cur.done():
            if interrupt:
                await self._stop_speech(cur, "hangup", clear=True)
            else:
                try:
                    await asyncio.wait_for(cur.wait(), GOODBYE_GRACE_S)
                except TimeoutError:
                    await self._stop_speech(cur, "hangup", clear=True)
            await cur  # the speech loop has let go of it
        if goodbye and goodbye.strip():
            if not self._tts_down:
                await self._play_closing(self._speech("goodbye", text=goodbye,
                                                      interruptible=False))
            clip = self._failure_clip() if self._tts_down and self._failure_clip else None
            if clip is not None:
                # The TTS is down (perhaps found out by the goodbye itself): the pre-rendered
                # line is all the agent can still say.
                samples, rate = clip
                await self._play_closing(self._speech(
                    "goodbye", text=self.settings.failure_goodbye, audio=samples,
                    sample_rate=rate, interruptible=False))
        await self._shutdown(reason)

    async def _play_closing(self, handle: SpeechHandle) -> None:
        """Play a last speech and wait (bounded) until it has been heard."""
        self._queue.append(handle)  # not _enqueue: the queue is closed to everyone else
        self._queue_ready.set()
        if handle.audio is not None:
            budget = 10.0 + len(handle.audio) / handle.sample_rate
        else:
            budget = 10.0 + len(handle.source_text) * 0.1
        try:
            await asyncio.wait_for(handle.wait(), budget)
        except TimeoutError:
            log.warning("goodbye did not finish within %.0fs", budget)

    async def _shutdown(self, reason: str) -> None:
        """Tear everything down once; concurrent callers (stop during a hangup) share it."""
        if self._ended is None or self._ended.done():
            return
        if self._shutting_down is None:
            # Not tracked in _tasks, so cancelling the tracked tasks cannot cut it short.
            self._shutting_down = self._require_loop().create_task(
                self._teardown(reason), name="conversation-teardown"
            )
        await asyncio.shield(self._shutting_down)

    async def _teardown(self, reason: str) -> None:
        assert self._ended is not None
        if not self._ending:
            self._begin_ending()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._thinking is not None:
            await self._thinking.stop()
        for h in [*self._queue, *([self._current] if self._current else []),
                  *self._interjections]:
            if h.stop_reason is None:
                h.stop_reason = "shutdown"
            h.resolve()
        self._interjections.clear()
        self._played_waiters.clear()
        self._queue.clear()
        self._current = None
        if self._stt_stream is not None:
            try:
                await asyncio.wait_for(self._stt_stream.aclose(), 2.0)
            except Exception as exc:
                log.debug("closing STT stream: %r", exc)
        try:
            await self._vad.aclose()
        except Exception as exc:
            log.debug("closing VAD stream: %r", exc)
        if not self._ended.done():
            self._ended.set_result(reason)

    # =========================================================================================
    # Plumbing
    # =========================================================================================
    def _now(self) -> float:
        return self._require_loop().time()

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("conversation not started")
        return self._loop

    def _set_state(self, new: State) -> None:
        old = self.state
        if old == new or (old == "ending" and new != "ending"):
            return
        self.state = new
        self._emit(ev.AgentStateChanged, old_state=old, new_state=new)

    def _emit(self, cls: type[ev.Event], /, mono: float | None = None, **fields: Any) -> None:
        event = cls(session_id=self.session_id,
                    mono=mono if mono is not None else self._now(), **fields)
        try:
            self._on_event(event)
        except Exception:
            log.exception("event callback failed for %s", cls.type)

    def _emit_error(self, stage: str, exc: BaseException) -> None:
        code = getattr(exc, "code", None) or type(exc).__name__
        # Provider errors never carry credentials (providers/base.py); cap the size anyway.
        self._emit(ev.SessionError, code=str(code), message=str(exc)[:500], stage=stage)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = self._require_loop().create_task(coro, name=f"conversation-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        log.error("conversation task %s failed", task.get_name(), exc_info=exc)
        self._emit_error("engine", exc)
        if task in self._core and not self._ending:
            # A core loop is gone: the call cannot work any more. End it with an explanation.
            self._begin_ending()
            self._spawn(self._shutdown("error"), "shutdown")

    @staticmethod
    def _cancel(task: asyncio.Task[Any] | None) -> None:
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
