"""Preemptive generation: once the caller is quiet and their words are final, start answering them,
held back until the turn ends (by then the first sentence is often already synthesised). The answer
plays once the turn ends with the same words, and is thrown away otherwise: nothing of it was heard
or done (it plays and runs tools only once released), so its context entries simply go."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from pipelines.context import ContextCheckpoint
from pipelines.engine.core import EngineCore
from pipelines.speech import SpeechHandle, TurnTiming


@dataclass(eq=False, slots=True)
class _Held:
    text: str
    speech: SpeechHandle
    context: ContextCheckpoint  # the context before the tentative user message


class Preemption:
    def __init__(self, core: EngineCore) -> None:
        self._core = core
        self._held: _Held | None = None
        self._released: SpeechHandle | None = None

    def maybe_start(self, speech_end_at: float) -> None:
        core = self._core
        turns = core.turns
        if (not core.settings.turn.preemptive_generation or self._held is not None
                or not turns.caller_paused or core.barge.active
                or not core.speech.idle or turns.suspended
                or core.ending or turns.pending_digits):
            return
        text = turns.words.text()
        if not text or (turns.cut_short is not None and turns.is_backchannel(text)):
            return
        checkpoint = core.context.checkpoint()
        core.context.add_user(text)
        turn = TurnTiming(uuid.uuid4().hex[:16], text, "preemptive", speech_end_at, 0.0, 0.0,
                          preemptive=True)
        speech = core.speech.new("reply", turn=turn)
        speech.release = asyncio.Event()
        self._held = _Held(text, speech, checkpoint)
        core.speech.enqueue(speech, front=True)

    def on_final(self, text: str) -> None:
        """A final transcript arrived while the turn's end is being decided."""
        held = self._held
        if held is not None and not same_words(held.text, text):
            self.discard()  # started on an interim the final corrected

    def release(self, text: str, trigger: str, eou_at: float,
                final_at: float) -> TurnTiming | None:
        """The turn ended with `text`: the held answer's turn if it was for exactly these words
        (`play` then lets it go), else None (and the held answer is gone)."""
        held, self._held = self._held, None
        if held is None:
            return None
        speech = held.speech
        turn = speech.turn
        if turn is not None and speech.stop_reason is None and not speech.done() \
                and same_words(held.text, text):
            turn.trigger, turn.eou_at, turn.final_at = trigger, eou_at, final_at
            self._released = speech
            return turn
        self._drop(held)
        return None

    def ready(self, text: str) -> asyncio.Event | None:
        """Set once the held answer for exactly `text` could play; None without one."""
        held = self._held
        if held is None or not same_words(held.text, text):
            return None
        return held.speech.held_ready

    def play(self) -> None:
        speech, self._released = self._released, None
        assert speech is not None and speech.release is not None
        speech.release.set()

    def discard(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._drop(held)

    def _drop(self, held: _Held) -> None:
        speech = held.speech
        speech.stop_reason = "discarded"
        self._core.context.rollback(held.context)
        self._core.speech.forget(speech)


def same_words(a: str, b: str) -> bool:
    """The same words, whatever the case and punctuation ("Hi, there." == "hi there")."""
    return _words_of(a) == _words_of(b)


def _words_of(text: str) -> list[str]:
    return "".join(c if c.isalnum() or c == "'" else " " for c in text.lower()).split()
