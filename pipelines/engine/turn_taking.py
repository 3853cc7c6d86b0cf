"""Whose turn it is: VAD edges and transcripts → the end of the caller's turn → a committed user
turn (answered), or nothing (noise, a backchannel: the agent carries on).

VAD stop → the end-of-turn decider runs (cancelled if speech resumes) while the STT is asked for
its final transcript; neither waits for the other. A streaming STT is asked earlier, as soon as the
caller goes quiet (the VAD's "quiet", ~30 ms), so its final is usually in before the stop; the
end-of-turn model's first check starts at the VAD's pause (halfway to the stop). An empty turn goes
back to listening, anything else is committed (`user.turn_completed`) and answered. Before
committing, an onset guard gives a caller who already sounds like talking again the VAD's start
time to say so. Keypad digits become turns of their own after a short gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from pipelines import events as ev
from pipelines.engine.core import EngineCore
from pipelines.engine.states import Trigger
from pipelines.outcomes import ErrorStage
from pipelines.settings import ConversationSettings, TurnSettings
from pipelines.speech import SpeechHandle, TurnTiming
from pipelines.transcripts import TranscriptBuffer
from pipelines.turn.base import EndOfTurnDecision
from pipelines.turn.delay import hesitation_floor_ms, looks_unfinished
from pipelines.turn.presets import AdaptiveTurnDelay, preset_name
from pipelines.vad.base import VadEvent

UserState = Literal["speaking", "listening", "away"]
MAX_DTMF_DIGITS = 32
ONSET_GUARD_SLACK_MS = 150
# The silence (from the end of speech) within which a turn waits for its early answer to be
# ready to play before committing.
COMMIT_SILENCE_MS = 400


class EndOfTurnDecider(Protocol):
    """pipelines.turn.endpointing.EndpointingPolicy, or a scripted stand-in in tests."""

    def early_check(self, get_audio: Callable[[], np.ndarray]) -> asyncio.Task[float] | None:
        ...

    async def decide(
        self, get_audio: Callable[[], np.ndarray], silence_ms_at_start: float = 0,
        get_text: Callable[[], str] = ..., scale: Callable[[float], float] | None = None,
        early: asyncio.Future[float] | None = None,
    ) -> EndOfTurnDecision: ...


@runtime_checkable
class TurnSettingsDecider(Protocol):
    """An end-of-turn decider driven by the turn settings (the endpointing policy), which a
    live retune hands the new ones."""

    settings: TurnSettings


class TurnTaking:
    def __init__(self, core: EngineCore, endpointing: EndOfTurnDecider | None) -> None:
        self._core = core
        self._settings = core.settings
        self._endpointing = endpointing
        self.words = TranscriptBuffer()
        self.user_speaking = False
        self.utterance_start_ms = 0.0
        self._turn_start_ms: float | None = None
        self._final_seq_at_stop = 0
        # The silence (by its start, stream ms) whose pause already asked for the final, and
        # the final count then.
        self._pause_flushed_at_ms = -1.0
        self._final_seq_at_pause = 0
        # Loop time of the end of speech while the caller is quiet after a flush (until they
        # go on or the stop comes).
        self._quiet_edge: float | None = None
        self._final_arrived_at = 0.0  # loop time of the last final transcript
        # The end-of-turn model's first check, started at the pause of the silence (by its
        # start, stream ms) that `_early_at_ms` names.
        self._early: asyncio.Task[float] | None = None
        self._early_at_ms = -1.0
        self.ignore_utterance = False  # the rest of an utterance judged a false interruption
        self.eou_task: asyncio.Task[None] | None = None
        self.flushed_at_stop = False  # the STT was asked to finalise at this VAD stop
        self._last_stop_ms = 0.0  # stream time of the last VAD stop
        # The longest silence the caller went on after in this turn (a mid-thought pause).
        self._longest_resumed_pause_ms = 0.0
        self._speech_end_at = 0.0  # ... and its loop time
        # semantic_vad "auto": the silence budget adapts to how this caller pauses.
        self.adaptive = (AdaptiveTurnDelay()
                         if preset_name(self._settings.semantic_vad) == "auto" else None)
        # An answer cut short by a barge-in, and what of it the caller did not hear: said
        # again if the "interruption" turns out to be nothing but a backchannel.
        self.cut_short: tuple[SpeechHandle, str] | None = None
        self._dtmf_digits: list[str] = []
        self.dtmf_task: asyncio.Task[None] | None = None
        self.suspended = 0  # turns_suspended() depth: caller speech is input, not turns
        self._stt_errors_at_turn = 0
        self.user_state: UserState = "listening"

    def retune(self, settings: ConversationSettings) -> None:
        """New turn-taking settings from the next utterance on (one being judged finishes
        under the old ones)."""
        old = preset_name(self._settings.semantic_vad)
        self._settings = settings
        if isinstance(self._endpointing, TurnSettingsDecider):
            self._endpointing.settings = settings.turn
        if preset_name(settings.semantic_vad) != old:
            self.adaptive = AdaptiveTurnDelay() if preset_name(settings.semantic_vad) == "auto" \
                else None

    def set_user_state(self, new: UserState, mono: float | None = None) -> None:
        """The caller's presence as consumers see it (`user.state_changed`, on change only)."""
        old, self.user_state = self.user_state, new
        if old != new:
            self._core.emit(ev.UserStateChanged, mono=mono, old_state=old, new_state=new)

    @property
    def deciding(self) -> bool:
        """The end-of-turn decision for the last pause is under way."""
        return self.eou_task is not None and not self.eou_task.done()

    @property
    def pending_digits(self) -> bool:
        return bool(self._dtmf_digits)

    def busy(self) -> bool:
        """The caller is in the middle of something: no idle prompt now."""
        return bool(
            self.user_speaking
            or self.deciding
            or self._core.barge.active
            or not self.words.empty
            or self._dtmf_digits
            or self.suspended > 0
        )

    # -- transcripts --------------------------------------------------------------------------
    def on_transcript(self, text: str, is_final: bool) -> None:
        core = self._core
        if is_final:
            self._final_arrived_at = core.now()
        if not core.ending:
            self.words.add(text, is_final)
        if core.barge.active:
            core.barge.evaluate()
        elif is_final and self.deciding:
            core.preemption.on_final(self.words.text())
            core.preemption.maybe_start(self._speech_end_at)
        elif is_final and self._quiet_edge is not None:
            core.preemption.maybe_start(self._quiet_edge)

    # -- VAD edges ----------------------------------------------------------------------------
    def on_vad(self, e: VadEvent) -> None:
        now = self._core.now()
        # VAD events are backdated to the true speech edge; turn that into loop time.
        edge = now - max(0.0, self._core.audio.stream_ms - e.at_ms) / 1000.0
        if e.kind == "start":
            self._on_speech_start(e, edge)
        elif e.kind == "quiet":
            self._flush_early(e, edge)
        elif e.kind == "resume":
            self._on_resume()
        elif e.kind == "pause":
            self._on_pause(e, edge)
        elif e.kind == "stop":
            self._on_speech_stop(e, edge, now)
        elif e.kind == "onset":
            self._core.barge.on_onset(edge)  # a hold is never begun while the call ends
        elif e.kind == "onset_lost":
            self._core.barge.on_onset_lost(e.speech_ms)

    def _on_speech_start(self, e: VadEvent, edge: float) -> None:
        core = self._core
        self.user_speaking = True
        self._quiet_edge = None
        self.utterance_start_ms = e.at_ms
        self.words.discarding = False
        self.ignore_utterance = False
        if self._turn_start_ms is None:
            self._turn_start_ms = e.at_ms
            self._stt_errors_at_turn = core.audio.stt_errors
            self._longest_resumed_pause_ms = 0.0
        if self.deciding:
            # The caller carries on: not the end of the turn, and not the answer's words.
            core.cancel(self.eou_task)
            pause_ms = e.at_ms - self._last_stop_ms
            self._longest_resumed_pause_ms = max(self._longest_resumed_pause_ms, pause_ms)
            if self.adaptive is not None:
                self.adaptive.resumed_after(pause_ms, self._settings.turn.max_wait_ms)
        core.preemption.discard()
        self._drop_early_check()
        core.liveness.cancel_idle()
        core.emit(ev.UserSpeechStarted, mono=edge)
        self.set_user_state("speaking", mono=edge)
        if core.ending:
            return
        core.barge.on_speech_start(edge)

    def _flush_early(self, e: VadEvent, edge: float) -> None:
        """The caller went quiet: a streaming STT is asked for its final now (once per
        silence). If it is in while the caller is still quiet, the answer starts on it
        (preemptive, held until the turn ends); if the caller goes on, the final simply holds
        the words so far."""
        core = self._core
        if core.ending or not core.audio.stt_finalizes_at_pauses \
                or self._pause_flushed_at_ms == e.at_ms:
            return
        self._final_seq_at_pause = self.words.seq
        self._pause_flushed_at_ms = e.at_ms
        self._quiet_edge = edge
        core.audio.flush_stt()

    def _on_resume(self) -> None:
        """Speech again before the stop: an answer started on the silence is for words the
        caller is still adding to."""
        self._quiet_edge = None
        self._core.preemption.discard()

    @property
    def caller_paused(self) -> bool:
        """The caller has stopped for now: the end of the turn is being decided, or a silence
        not yet long enough for that has its final transcript in."""
        if self.deciding:
            return not self.user_speaking
        return (self._quiet_edge is not None and self.user_speaking
                and self.words.seq > self._final_seq_at_pause and not self.ignore_utterance)

    def _on_pause(self, e: VadEvent, edge: float) -> None:
        """Halfway to a stop. The end-of-turn model's first check starts now, so its score is
        in by the stop (dropped if the caller goes on); not in a barge-in, whose stop is
        judged by the barge-in first."""
        core = self._core
        if core.ending:
            return
        if self._endpointing is not None and not core.barge.active \
                and not self.ignore_utterance and not self.suspended:
            self._drop_early_check()
            self._early = self._endpointing.early_check(
                lambda: core.audio.turn_audio(self._turn_start_ms))
            self._early_at_ms = e.at_ms
        self._flush_early(e, edge)  # a stop too short for a "quiet" of its own

    def cancel_tasks(self) -> None:
        """The call is ending: no decision, no early check, no digits turn."""
        self._core.cancel(self.eou_task)
        self._core.cancel(self.dtmf_task)
        self._drop_early_check()

    def _drop_early_check(self) -> None:
        if self._early is not None:
            self._early.cancel()
            self._early = None

    def _take_early_check(self, stop_ms: float) -> asyncio.Task[float] | None:
        """The first check started at this silence's pause, if any."""
        early, self._early = self._early, None
        if early is not None and self._early_at_ms != stop_ms:
            early.cancel()
            return None
        return early

    def _on_speech_stop(self, e: VadEvent, edge: float, now: float) -> None:
        core = self._core
        self.user_speaking = False
        self._quiet_edge = None
        # The same silence's pause may have asked for the final already: then that final, not
        # a later one, is the one to wait for.
        early = e.at_ms == self._pause_flushed_at_ms
        self._final_seq_at_stop = self._final_seq_at_pause if early else self.words.seq
        self.flushed_at_stop = early
        self._last_stop_ms = e.at_ms
        self._speech_end_at = edge
        core.emit(ev.UserSpeechStopped, speech_ms=e.speech_ms, mono=edge)
        self.set_user_state("listening", mono=edge)
        if core.ending:
            return
        if self.suspended:
            core.audio.flush_stt()  # the host reads the words: have them finalised now
            return
        if self.ignore_utterance:
            # The rest of an utterance already judged a false interruption ("yeah yeah").
            self.ignore_utterance = False
            self.reset_turn_if_empty()
            core.liveness.arm_idle()
            return
        if core.barge.on_speech_stop(e.speech_ms, now) == "resumed":
            return  # a false interruption: no turn to end
        if not self.flushed_at_stop:
            # Ask for the final transcript now, while the end-of-turn model runs: neither
            # waits for the other.
            core.audio.flush_stt()
            self.flushed_at_stop = True
        silence_ms = max(0.0, core.audio.stream_ms - e.at_ms)
        self.eou_task = core.spawn(
            self._end_of_turn(edge, silence_ms, self._take_early_check(e.at_ms)), "end-of-turn")
        core.preemption.maybe_start(edge)

    # -- end of turn --------------------------------------------------------------------------
    async def _decide(self, silence_ms: float,
                      early: asyncio.Task[float] | None = None) -> EndOfTurnDecision:
        if self._endpointing is None:
            return EndOfTurnDecision("vad", None, 0.0)
        core = self._core
        adaptive = self.adaptive
        floor = hesitation_floor_ms(self._longest_resumed_pause_ms, self._settings.turn)

        def budget(ms: float) -> float:
            return max(adaptive.budget(ms) if adaptive is not None else ms, floor)

        try:
            return await self._endpointing.decide(
                lambda: core.audio.turn_audio(self._turn_start_ms), silence_ms,
                self.words.text, budget if adaptive is not None or floor else None, early)
        finally:
            if early is not None:
                early.cancel()  # a decision made without it (the VAD's, a timeout)

    async def _end_of_turn(self, speech_end_at: float, silence_ms: float,
                           early: asyncio.Task[float] | None = None) -> None:
        core = self._core
        decision = await self._decide(silence_ms, early)
        eou_at = core.now()
        if not await core.barge.is_turn():
            return
        if core.ending or self.suspended:
            return
        # A final transcript is required; it was asked for at the VAD stop.
        if self.words.interim or self.words.seq <= self._final_seq_at_stop:
            seq = self._final_seq_at_stop
            if not self.flushed_at_stop:
                seq = self.words.seq
                core.audio.flush_stt()
            await self.words.wait_final(seq, self._settings.turn.stt_final_timeout_ms / 1000.0)
        text = self.words.text()
        if decision.trigger == "model" and looks_unfinished(text):
            # The model was sure before the words came in, and they stop mid-thought ("Could
            # you check whether", a number half read out): wait for the caller as the words
            # say (this task is cancelled if they go on).
            silence_ms = max(0.0, core.audio.stream_ms - self._last_stop_ms)
            decision = await self._decide(silence_ms)
            eou_at = core.now()
            text = self.words.text()
        # When the words were final: the final's arrival (often before the decision), or now
        # when the engine stopped waiting for one and goes on with the interim.
        final_at = (self._final_arrived_at
                    if self.words.seq > self._final_seq_at_stop and not self.words.interim
                    else core.now())
        if self.suspended:
            return
        if not text and core.audio.stt_errors > self._stt_errors_at_turn:
            # The caller spoke but the STT failed (every option) before it heard them: say so
            # rather than leave them waiting for an answer that will never come.
            self.reset_turn()
            core.failures.reply_lost(ErrorStage.STT)
            return
        if not text or (self.cut_short is not None and self.is_backchannel(text)):
            # Noise, words the STT could not make out, or a "mhm" that stopped the agent:
            # nothing to answer. An answer it cut short goes on with what was not heard.
            core.preemption.discard()
            self.reset_turn()
            self._carry_on_after_backchannel(text)
            if core.speech.idle:
                core.fire(Trigger.LISTEN)
            core.liveness.arm_idle()
            return
        await self._until_answer_ready(text, speech_end_at)
        # The VAD confirms a new onset only start_ms after it: if the caller already sounds
        # like talking again, give it that long to say so (this task is cancelled if it does)
        # rather than answer over them.
        await self._onset_guard()
        if self.adaptive is not None and decision.trigger == "model":
            start_ms = self._turn_start_ms if self._turn_start_ms is not None \
                else self._last_stop_ms
            self.adaptive.ended_confidently(self._last_stop_ms - start_ms)
        self.commit(text, decision.trigger, decision.probability,
                    speech_end_at, eou_at, final_at)

    async def _until_answer_ready(self, text: str, speech_end_at: float) -> None:
        """An answer started early for these words and not ready to play yet: commit when it
        is, within `COMMIT_SILENCE_MS` of silence. Committing sooner would not let the caller
        hear it sooner, and a caller who goes on meanwhile (this task is cancelled) is then
        not cut off: with the words in ~30 ms into a silence, the decision often comes while a
        caller is still drawing breath between two clauses."""
        ready = self._core.preemption.ready(text)
        wait_s = speech_end_at + COMMIT_SILENCE_MS / 1000.0 - self._core.now()
        if ready is None or ready.is_set() or wait_s <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), wait_s)

    async def _onset_guard(self) -> None:
        # start_ms of speech plus what the VAD takes to see it (windows, batching).
        vad = self._settings.vad
        deadline = self._core.now() + (vad.start_ms + ONSET_GUARD_SLACK_MS) / 1000.0
        while self._core.now() < deadline:
            if self._core.audio.vad.probability < vad.threshold:
                return
            await asyncio.sleep(0.02)  # one frame: the VAD's probability is polled, not pushed

    def commit(self, text: str, trigger: str, probability: float | None,
               speech_end_at: float, eou_at: float, final_at: float) -> None:
        """The caller's turn is over: report it and answer it (or release the answer started
        at the pause, if it was for exactly these words)."""
        core = self._core
        self.cut_short = None
        turn = core.preemption.release(text, trigger, eou_at, final_at)
        if turn is None:
            turn = TurnTiming(uuid.uuid4().hex[:16], text, trigger, speech_end_at, eou_at,
                              final_at)
        self.reset_turn()
        core.liveness.caller_answered()
        core.emit(ev.UserTurnCompleted, turn_id=turn.id, text=text, trigger=trigger,
                  eou_probability=probability)
        if turn.preemptive:
            core.preemption.play()
            return
        core.context.add_user(text)
        core.speech.enqueue(core.speech.new("reply", turn=turn))

    def reset_turn(self) -> None:
        self.words.clear()
        self._turn_start_ms = self.utterance_start_ms if self.user_speaking else None
        self._longest_resumed_pause_ms = 0.0  # a committed turn's pauses say nothing of the next

    def reset_turn_if_empty(self) -> None:
        if self.words.empty and not self.user_speaking:
            self._turn_start_ms = None

    def is_backchannel(self, text: str) -> bool:
        return self._core.barge.policy.backchannels.is_backchannel(text)

    def _carry_on_after_backchannel(self, text: str) -> None:
        core = self._core
        cut, self.cut_short = self.cut_short, None
        if text and self.is_backchannel(text):
            core.emit(ev.UserBackchannel, text=text)
        if cut is None or core.ending:
            return
        _speech, rest = cut
        if rest:
            core.speech.enqueue(core.speech.new("say", text=rest))

    # -- suspension (the host reads the caller's words) ----------------------------------------
    def suspend(self) -> None:
        self.suspended += 1
        self._core.preemption.discard()
        self._core.barge.end_current(False)  # a hold that began just before: not a turn
        self._core.cancel(self.eou_task)

    def unsuspend(self) -> None:
        self.suspended -= 1
        core = self._core
        if not self.suspended and not core.ending and core.started:
            self.words.clear()
            # Late results and the rest of an utterance in progress belong to the input.
            self.words.discarding = True
            self.ignore_utterance = self.user_speaking
            self._turn_start_ms = None
            if core.speech.idle:
                core.liveness.arm_idle()

    # -- keypad -------------------------------------------------------------------------------
    def on_dtmf(self, digit: str) -> None:
        core = self._core
        if len(self._dtmf_digits) < MAX_DTMF_DIGITS:
            self._dtmf_digits.append(digit)
        core.liveness.cancel_idle()
        core.speech.stop_for_dtmf()
        core.cancel(self.dtmf_task)
        delay = 0.0 if digit == "#" else self._settings.dtmf_inter_digit_ms / 1000.0
        self.dtmf_task = core.spawn(self._dtmf_commit(delay), "dtmf")

    async def _dtmf_commit(self, delay: float) -> None:
        await asyncio.sleep(delay)
        core = self._core
        digits = "".join(self._dtmf_digits)
        self._dtmf_digits.clear()
        if not digits or core.ending:
            return
        core.cancel(self.eou_task)
        now = core.now()
        text = " ".join(p for p in (self.words.text(), f"[DTMF {digits}]") if p)
        self.commit(text, "dtmf", None, now, now, now)
