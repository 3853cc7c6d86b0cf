"""One interruption episode at a time (soft barge-in).

Caller speech while the agent talks (or thinks) holds the agent's audio, from the VAD's onset
(~60 ms of speech; a run that ends before it is a start lets the hold go at once): the writer
stops and playout is cleared at once (a transport cannot pause), remembering where the caller
stopped hearing. With `interruption.hold: duck` the agent talks on instead, at `DUCK_GAIN`,
until the interruption is committed (then its audio is cleared) or judged false (full volume
again).
`InterruptionPolicy` then decides, as speech and words arrive, between a committed
interruption (cancel LLM/TTS/tools, truncate the assistant message to what was heard) and a
false one (re-send the audio from where it was cut and carry on).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

from pipelines import events as ev
from pipelines.engine.core import EngineCore
from pipelines.engine.states import Trigger
from pipelines.interruption import BargeFacts, InterruptionPolicy
from pipelines.outcomes import ErrorStage
from pipelines.speech_output import SpeechOutput
from pipelines.transcripts import Mark

SINK_CLEAR_TIMEOUT_S = 2.0  # a transport that never confirms a clear must not hang the call
# The agent's voice while a ducked hold lasts: -12 dB, clearly softer (the caller hears they
# were noticed) and still intelligible if it was only a "mhm".
DUCK_GAIN = 0.25


@dataclass(eq=False, slots=True)
class Episode:
    """One soft barge-in: the agent is held while we find out what the caller wants."""

    onset_at: float  # loop time of the speech onset
    mark: Mark  # what had been recognised before the onset
    deadline: float  # loop time at which the hold window runs out
    resolved: asyncio.Future[bool]  # True: the caller's speech is a turn; False: ignore it
    speech_done_ms: float = 0.0  # speech of utterances that ended during the hold
    awaiting_final_seq: int | None = None  # a final transcript was requested after this count
    settling: bool = False
    # Held on the VAD's onset, before its start: the caller is speaking, not yet in a turn.
    onset_only: bool = False
    timer: asyncio.Task[None] | None = field(default=None, repr=False)
    # The agent's audio cut at the hold (None: it was not talking yet), and when it went silent.
    output: SpeechOutput | None = field(default=None, repr=False)
    cut: asyncio.Task[None] | None = field(default=None, repr=False)
    silenced_at: float | None = None


class BargeIn:
    def __init__(self, core: EngineCore) -> None:
        self._core = core
        self.policy = InterruptionPolicy(core.settings.interruption)
        self.current: Episode | None = None

    @property
    def active(self) -> bool:
        return self.current is not None

    def on_onset(self, edge: float) -> None:
        """A few tens of ms of speech over the agent: hold now, judge once it is a start."""
        if self.current is None and self._can_hold():
            self._begin(edge, onset_only=True)

    def on_onset_lost(self, speech_ms: float) -> None:
        """The sound that held the agent ended before it was speech enough for a start."""
        b = self.current
        if b is not None and b.onset_only and not b.settling:
            self._resume_after_false_interruption(b, speech_ms, "")

    def on_speech_start(self, edge: float) -> None:
        b = self.current
        if b is not None:
            b.onset_only = False
            b.awaiting_final_seq = None  # talking again: wait for more speech, not a final
        elif self._can_hold():
            self._begin(edge)

    def on_speech_stop(self, speech_ms: float, now: float) -> Literal["resumed"] | None:
        """An utterance ended during the hold; "resumed" if it was a false interruption."""
        b = self.current
        if b is None:
            return None
        core = self._core
        words = core.turns.words
        b.speech_done_ms += speech_ms
        if not self.policy.words_qualify(words.text_since(b.mark)):
            # Long enough maybe, but no qualifying words yet: ask the STT to finalise.
            b.awaiting_final_seq = words.seq
            b.deadline = max(b.deadline,
                             now + core.settings.turn.stt_final_timeout_ms / 1000.0)
        self.evaluate()
        if self.current is b and b.awaiting_final_seq is not None:
            core.audio.flush_stt()
            core.turns.flushed_at_stop = True
        if b.resolved.done() and not b.resolved.result():
            return "resumed"
        return None

    async def is_turn(self) -> bool:
        """False if the caller's speech turned out to be a false interruption."""
        b = self.current
        return b is None or await asyncio.shield(b.resolved)

    def end_current(self, is_turn: bool) -> None:
        if self.current is not None:
            self._end(self.current, is_turn)

    def _can_hold(self) -> bool:
        core = self._core
        cur = core.speech.current
        return (
            core.settings.interruption.enabled
            and cur is not None
            and cur.interruptible
            and cur.stop_reason is None
            and not core.ending
            and not core.turns.suspended
        )

    def _begin(self, onset_at: float, onset_only: bool = False) -> None:
        core = self._core
        window_s = core.settings.interruption.false_interruption_timeout_ms / 1000.0
        b = Episode(onset_at=onset_at, mark=core.turns.words.mark(),
                    deadline=onset_at + window_s, resolved=core.require_loop().create_future(),
                    onset_only=onset_only)
        self.current = b
        core.speech.gate.clear()  # hold: the speech writer stops feeding the sink
        cur = core.speech.current
        out = cur.output if cur is not None else None
        if out is not None and out.audio_started:
            b.output = out
            if core.settings.interruption.hold == "duck":
                b.cut = core.spawn(self._duck_playout(b, out), "barge-duck")
            else:
                b.cut = core.spawn(self._cut_playout(b, out), "barge-cut")
        core.fire(Trigger.HELD)
        b.timer = core.spawn(self._timer(b), "barge-timer")
        self.evaluate()

    async def _cut_playout(self, b: Episode, out: SpeechOutput) -> None:
        """Make the hold audible now rather than after what is queued at the far end has
        played: clear playout, remembering where the caller stopped hearing (for a resume)."""
        try:
            await asyncio.wait_for(out.cut(), SINK_CLEAR_TIMEOUT_S)
        except Exception as exc:
            self._core.emit_error(ErrorStage.TRANSPORT, exc)
        b.silenced_at = self._core.now()

    async def _duck_playout(self, b: Episode, out: SpeechOutput) -> None:
        """The agent talks on, softly, while the caller's speech is judged: what the far end
        holds is re-sent ducked at once, and the writer goes on."""
        try:
            await asyncio.wait_for(out.duck(DUCK_GAIN), SINK_CLEAR_TIMEOUT_S)
        except Exception as exc:
            self._core.emit_error(ErrorStage.TRANSPORT, exc)
        if self.current is b and not b.settling:
            self._core.speech.gate.set()

    def evaluate(self) -> None:
        b = self.current
        if b is None or b.settling:
            return
        core = self._core
        turns = core.turns
        expired = core.now() >= b.deadline
        # An onset is speech until the VAD says it was not (its start or "onset_lost" always
        # follows); one still unconfirmed when the window ends never became speech at all.
        onset_speaking = b.onset_only and not expired
        speech_ms = b.speech_done_ms
        if turns.user_speaking:
            speech_ms += max(0.0, core.audio.stream_ms - turns.utterance_start_ms)
        elif onset_speaking:
            speech_ms += max(0.0, core.now() - b.onset_at) * 1000.0
        text = turns.words.text_since(b.mark)
        awaiting = b.awaiting_final_seq is not None and turns.words.seq <= b.awaiting_final_seq
        verdict = self.policy.decide(BargeFacts(
            speech_ms=speech_ms, speaking=turns.user_speaking or onset_speaking, text=text,
            window_expired=expired, awaiting_final=awaiting,
        ))
        if verdict == "commit":
            b.settling = True
            core.spawn(self._commit(b), "barge-commit")
        elif verdict == "resume":
            self._resume_after_false_interruption(b, speech_ms, text)

    async def _timer(self, b: Episode) -> None:
        while self.current is b and not b.settling:
            delay = b.deadline - self._core.now()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            self.evaluate()
            return

    async def _commit(self, b: Episode) -> None:
        core = self._core
        cur = core.speech.current
        try:
            if cur is not None and cur.interruptible and cur.stop_reason is None:
                core.speech.drop_queued(interruptible_only=True)
                await core.speech.stop(cur, "barge_in", clear=True, barge=b)
                heard, full = cur.heard_text, cur.text
                if not cur.in_tools and full.startswith(heard):
                    core.turns.cut_short = (cur, full[len(heard):].strip())
        finally:
            self._end(b, True)
            if core.speech.current is None and not core.ending:
                core.fire(Trigger.LISTEN)

    def _resume_after_false_interruption(self, b: Episode, speech_ms: float,
                                         text: str) -> None:
        core = self._core
        turns = core.turns
        # What was said since the onset was not a turn: forget it, including results still in
        # flight for the same utterance (dropped until the caller speaks again).
        unfinalised = bool(turns.words.interim)
        turns.words.drop_since(b.mark)
        turns.words.discarding = True
        if unfinalised and not turns.user_speaking:
            # Judged on interim words ("mhm"): a streaming STT still holds them, and would put
            # them in front of the caller's next words. Its final now closes them off (and is
            # dropped, as above).
            core.audio.flush_stt()
        if turns.user_speaking:
            turns.ignore_utterance = True
        turns.reset_turn_if_empty()
        self._end(b, False)
        cur = core.speech.current
        if cur is not None and cur.output is not None and cur.output.audio_started:
            core.fire(Trigger.RESUMED)
        elif cur is None:
            core.fire(Trigger.LISTEN)
        core.emit(ev.AgentFalseInterruption, speech_ms=speech_ms, text=text)
        if text and self.policy.backchannels.is_backchannel(text):
            core.emit(ev.UserBackchannel, text=text, speech_ms=speech_ms)
        if cur is None:
            core.liveness.arm_idle()

    def _end(self, b: Episode, is_turn: bool) -> None:
        core = self._core
        if self.current is b:
            self.current = None
        b.settling = True
        core.cancel(b.timer)
        if not b.resolved.done():
            b.resolved.set_result(is_turn)
        out, b.output = b.output, None
        cur = core.speech.current
        if (out is not None and cur is not None and cur.output is out
                and cur.stop_reason is None and not cur.done()):
            # The speech goes on (a false interruption, or it could no longer be interrupted):
            # first the audio the hold cut away, then the writer carries on.
            core.spawn(self._resume_playout(b, out), "barge-resume")
        else:
            core.speech.gate.set()

    async def _resume_playout(self, b: Episode, out: SpeechOutput) -> None:
        try:
            if b.cut is not None:
                await asyncio.wait([b.cut])
            out.unduck()
            await out.resume()
        except Exception as exc:
            self._core.emit_error(ErrorStage.TRANSPORT, exc)
        finally:
            if self.current is None:  # unless a new hold began meanwhile
                self._core.speech.gate.set()

