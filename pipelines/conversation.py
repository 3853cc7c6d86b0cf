"""The per-call conversation: who speaks when.

Inputs: caller audio from the call's `AudioInbox` (the transport's, read by the engine itself:
20 ms frames at the carrier's rate) or `push_audio`, DTMF digits (`on_dtmf`), API calls (`say`,
`interrupt`, `inject`, `hangup`, `stop`). Outputs: audio segments into a `PlayoutSink` and typed
events through `on_event`. Providers are reached only through the structural types in
`pipelines.ports`; turn detection through a VAD stream and an end-of-turn decider that the host
injects (so tests can script them).

This class is the public face; the work is done by parts that own their state
(pipelines/engine/), around one agent state machine with a transition table
(pipelines/engine/states.py):

- `CallerAudio`: each frame is converted per consumer: 16 kHz for the ring buffer (last 8 s, for
  the end-of-turn model) and the VAD, the STT's own format for the STT (a μ-law leg's bytes as
  they came when the STT takes them); `push_audio` only enqueues, so providers never block the
  transport.
- `TurnTaking`: VAD stop → end-of-turn decision and final transcript → a committed user turn
  (`user.turn_completed`), answered; noise and backchannels come to nothing. `Preemption`
  starts an answer at a pause and releases or drops it when the turn ends.
- `SpeechDriver`: the answer is one *speech* (pipelines/speech.py) produced by `ReplyGenerator`
  (LLM rounds and tools, pipelines/reply.py) and played by `SpeechOutput` (sentences → TTS →
  playout segments). Speeches play one at a time from a bounded queue.
- `BargeIn`: caller speech while the agent talks (or thinks) holds the agent's audio, then
  commits the interruption (context truncated to what was heard) or resumes where it was cut.
- `Liveness`: idle re-prompts then goodbye, a hard maximum call duration, and a response
  watchdog. The call is never silent without an event saying why.
- `ProviderFailures`: an answer lost to providers gets an apology; too many, an STT that cannot
  be kept alive or a TTS that cannot speak end the call ("provider_error").
- `Ending`: hangup and teardown. Every task is tracked and cancelled by `stop`; every buffer is
  bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np

from pipelines import events as ev
from pipelines.audio.frames import SAMPLE_RATE, as_int16
from pipelines.audio.inbox import AudioFormat, AudioInbox, CallerFrame
from pipelines.context import ChatContext
from pipelines.engine.barge_in import BargeIn
from pipelines.engine.caller_audio import ENGINE_FORMAT, CallerAudio
from pipelines.engine.core import EngineCore
from pipelines.engine.ending import Ending
from pipelines.engine.failures import ProviderFailures
from pipelines.engine.liveness import Liveness
from pipelines.engine.preemption import Preemption
from pipelines.engine.speech_driver import SpeechDriver
from pipelines.engine.states import AgentState, Trigger
from pipelines.engine.turn_taking import EndOfTurnDecider, TurnTaking
from pipelines.interruption import InterruptionPolicy
from pipelines.outcomes import EndReason, ErrorStage
from pipelines.ports import LLMLike, PlayoutSink, PrefillingLLM, STTLike, TTSLike
from pipelines.reply import ReplyGenerator, ReplyUpdate, ToolExecutor, prefill
from pipelines.settings import ConversationSettings
from pipelines.speech import SpeechHandle
from pipelines.vad.base import VadStream

__all__ = ["Conversation", "EndOfTurnDecider"]


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
        failure_clip: Callable[[], tuple[np.ndarray, int] | None] | None = None,
        inbox: AudioInbox | None = None,
        caller_format: AudioFormat = ENGINE_FORMAT,
        on_caller_audio: Callable[[np.ndarray], None] | None = None,
        preamble: str | None = None,
    ) -> None:
        self.settings = settings
        # Spoken first, before the greeting, and never interrupted (e.g. a recording notice).
        self._preamble = (preamble or "").strip()
        self.session_id = session_id
        self.context = ChatContext(prompt, settings.max_context_items)
        self._greeting = (greeting or "").strip()
        self._llm = llm
        self._tools = list(tools) if tools else None
        core = self._core = EngineCore(settings, session_id, on_event, self.context)
        replies = self._replies = ReplyGenerator(
            llm=llm, context=self.context, emit=core.emit, clock=core.now,
            tools=self._tools, tool_executor=tool_executor,
            max_tool_rounds=settings.max_tool_rounds, tool_timeout_s=settings.tool_timeout_s,
            stop_requested=lambda: core.ending,
        )
        core.audio = self._audio = CallerAudio(
            core, vad=vad, stt=stt, language=language, inbox=inbox,
            caller_format=caller_format, on_caller_audio=on_caller_audio)
        core.turns = self._turns = TurnTaking(core, endpointing)
        core.preemption = Preemption(core)
        core.barge = self._barge = BargeIn(core)
        core.speech = self._speech = SpeechDriver(
            core, sink=sink, tts=tts, replies=replies, voice=voice)
        core.liveness = self._liveness = Liveness(core)
        core.failures = ProviderFailures(core, failure_clip)
        core.end = self._end = Ending(core)

    @property
    def state(self) -> AgentState:
        return self._core.state

    @property
    def dropped_frames(self) -> int:
        """Caller frames lost because the engine fell behind (the inbox's one counter)."""
        return self._audio.dropped_frames

    # =========================================================================================
    # Public API
    # =========================================================================================
    async def start(self) -> None:
        """Open the STT stream, start the internal tasks and (if configured) greet."""
        core = self._core
        if core.loop is not None:
            raise RuntimeError("conversation already started")
        core.loop = asyncio.get_running_loop()
        self._end.open()
        assert self._end.ended is not None
        try:
            await self._audio.open()
        except Exception as exc:
            core.emit_error(ErrorStage.STT, exc)
            self._end.ended.set_result(str(EndReason.ERROR))
            raise
        self._audio.start()
        self._speech.start()
        self._liveness.start()
        if self._preamble:
            self._speech.enqueue(self._speech.new("say", text=self._preamble,
                                                  interruptible=False, add_to_context=False))
        if self._greeting:
            self._speech.enqueue(self._speech.new("greeting", text=self._greeting))
        elif not self._preamble:
            core.fire(Trigger.LISTEN)
            self._liveness.arm_idle()
        if isinstance(self._llm, PrefillingLLM):
            core.spawn(prefill(self._llm, self.context.messages(), self._tools, self._greeting,
                               self._speech.agent_audio), "llm-prefill")

    async def push_audio(self, frame: np.ndarray | CallerFrame) -> None:
        """One 20 ms frame of caller audio (16 kHz mono int16, or a carrier frame) into the
        call's inbox. Never waits on providers."""
        if not self._core.started or self._core.ending:
            return
        self._audio.push(frame)

    def on_dtmf(self, digit: str) -> None:
        """A keypad digit from the caller: an event, and (after a short gap) a user turn."""
        digit = str(digit).strip()
        if not self._core.started or self._core.ending or not digit:
            return
        self._core.emit(ev.UserDtmf, digit=digit)
        self._turns.on_dtmf(digit)

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
        if not self._core.started or self._end.ended is None or self._end.done:
            raise RuntimeError("conversation is not running")
        if self._core.ending:
            raise RuntimeError("conversation is ending")
        speech = self._speech
        if isinstance(content, str):
            if not content.strip():
                raise ValueError("nothing to say")
            if speech.can_interject():
                return speech.interject(content, interruptible)
            handle = speech.new("say", text=content, interruptible=interruptible,
                                add_to_context=add_to_context)
        else:
            audio = as_int16(content)
            if not len(audio) or sample_rate <= 0:
                raise ValueError("audio must be non-empty with a positive sample rate")
            handle = speech.new("say", text=transcript, audio=audio, sample_rate=sample_rate,
                                interruptible=interruptible, add_to_context=add_to_context)
        speech.enqueue(handle)
        return handle

    def play(self, audio: np.ndarray, *, sample_rate: int, interruptible: bool = True,
             ) -> SpeechHandle:
        """Play recorded int16 audio (mono, at `sample_rate`) after whatever is playing now, as
        a speech of its own: barge-in and `interrupt` cut it like the agent's words. It has no
        text, so it never enters the LLM context."""
        if not self._core.started or self._end.ended is None or self._end.done:
            raise RuntimeError("conversation is not running")
        if self._core.ending:
            raise RuntimeError("conversation is ending")
        samples = as_int16(audio)
        if not len(samples) or sample_rate <= 0:
            raise ValueError("audio must be non-empty with a positive sample rate")
        handle = self._speech.new("play", audio=samples, sample_rate=sample_rate,
                                  interruptible=interruptible, add_to_context=False)
        self._speech.enqueue(handle)
        return handle

    def update(self, prompt: str | None = None, tools: list[Any] | None = None,
               llm: LLMLike | None = None, *,
               tool_executor: ToolExecutor | None = None, tts: TTSLike | None = None,
               voice: str | None = None) -> list[str]:
        """Change the system prompt, the tools offered to the LLM (`[]` removes them all), the
        LLM itself and/or the TTS and voice, from the agent's next answer on (the one being
        spoken, tool rounds and all, finishes as it began). `tool_executor` runs the new tools'
        calls when the call had none before. Emits `session.updated` and returns the fields
        changed."""
        changed = [name for name, value in (("prompt", prompt), ("tools", tools), ("llm", llm),
                                            ("tts", tts), ("voice", voice))
                   if value is not None]
        if not changed:
            return []
        self._speech.use_voice(tts, voice)
        self._replies.update(ReplyUpdate(prompt=prompt, tools=tools, llm=llm,
                                         tool_executor=tool_executor))
        if tools is not None:
            self._tools = list(tools) or None
        if llm is not None:
            self._llm = llm
        if self._core.started:
            self._core.emit(ev.SessionUpdated, fields=changed)
        return changed

    def retune(self, settings: ConversationSettings) -> None:
        """New turn-taking settings (vad thresholds, turn, interruption, idle, semantic_vad)
        while the call runs: each part takes them from its next decision on. The VAD engine
        cannot change mid-call."""
        if settings.vad.engine != self.settings.vad.engine:
            raise ValueError("vad.engine: cannot change while the call runs")
        self.settings = self._core.settings = settings
        self._audio.vad.retune(settings.vad)
        self._turns.retune(settings)
        self._barge.policy = InterruptionPolicy(settings.interruption)
        if self._core.started:
            self._core.emit(ev.SessionUpdated, fields=["turn_taking"])

    def interrupt(self, force: bool = False) -> SpeechHandle | None:
        """Stop the agent now (only interruptible speech unless `force`) and drop what is queued.
        Returns the interrupted speech (await it to know it has stopped), or None."""
        if not self._core.started:
            return None
        return self._speech.interrupt(force)

    def inject(self, text: str, role: Literal["system", "user", "assistant"] = "system") -> None:
        """Add context for the next turn (e.g. data looked up by the host); no response."""
        self.context.inject(text, role)

    def extend_response_wait(self, seconds: float) -> bool:
        """Whoever writes the answer asked for more time (a customer app's `extend_wait`): the
        answer being waited for gets `seconds` more before the response watchdog apologises.
        False when no answer is being waited for."""
        current = self._speech.current
        if current is None or current.done():
            return False
        current.watch_from += seconds
        return True

    @contextlib.contextmanager
    def turns_suspended(self) -> Iterator[None]:
        """While inside, the caller's speech is input for the host (digits being collected,
        an answering-machine check), not conversation: it neither barges in nor becomes a
        turn, and no idle prompt fires. VAD and transcript events still flow (finals are
        requested promptly at each pause); the words are dropped when the block ends."""
        self._turns.suspend()
        try:
            yield
        finally:
            self._turns.unsuspend()

    def hangup(self, reason: str = EndReason.AGENT_HANGUP, *, goodbye: str | None = None,
               interrupt: bool = False) -> None:
        """End the call politely: let the current speech finish (or cut it if `interrupt`),
        say `goodbye` if given, then end with `reason` (see `wait_ended`)."""
        self._end.hangup(reason, goodbye=goodbye, interrupt=interrupt)

    async def stop(self, reason: str = EndReason.STOPPED) -> None:
        """End now (the caller hung up, the host is shutting down). Idempotent."""
        if not self._core.started:
            return
        await self._end.shutdown(reason)

    async def wait_ended(self) -> str:
        """Wait until the conversation has ended; returns the reason."""
        if self._end.ended is None:
            raise RuntimeError("conversation not started")
        return await asyncio.shield(self._end.ended)

    @property
    def ended(self) -> bool:
        return self._end.done
