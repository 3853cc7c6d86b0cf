"""Endpointing: when has the user finished their turn?

The conversation calls `decide()` right at VAD stop — at the same moment as it asks the STT for
its final transcript, so neither waits for the other — and cancels the task if speech resumes.
- detector "vad" (or no model loaded): the VAD stop ends the turn at once.
- detector "smart_turn": run the model on the turn's audio (last ≤ 8 s). P ≥ threshold ends the
  turn now. Otherwise the caller may be pausing mid-sentence: the silence budget
  (pipelines/turn/delay.py) grows as P falls and as the words look unfinished; while it runs
  the model is re-run every `recheck_ms` on the audio grown by the silence heard since (a longer
  pause after a complete thought raises P), and the budget is recomputed from the latest P and
  the latest transcript (the final usually lands during the first check).
- `early_check()` starts that first check at the VAD's pause, halfway to the stop, on the audio
  so far; `decide(early=...)` then awaits it instead of starting one (the engine drops it if
  the caller goes on). The decision comes up to half the stop's silence sooner.

Budgets are measured from the true end of speech: the VAD reports stop only after `stop_ms` of
silence, which the caller passes as `silence_ms_at_start`, so a budget means the same pause
length whatever the VAD settings. `decided_after_ms` is measured from the call (the VAD stop
event), model time included, on the event loop's clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import numpy as np

from pipelines.settings import TurnSettings
from pipelines.turn.base import EndOfTurnDecision, EndOfTurnModel
from pipelines.turn.delay import silence_budget_ms

log = logging.getLogger(__name__)

Scale = Callable[[float], float]  # adapts a silence budget ("auto", a hesitant caller)
TEXT_POLL_S = 0.05


def _no_text() -> str:
    return ""


class EndpointingPolicy:
    def __init__(self, model: EndOfTurnModel | None, settings: TurnSettings) -> None:
        self.model = model
        self.settings = settings

    def early_check(self, get_audio: Callable[[], np.ndarray]) -> asyncio.Task[float] | None:
        """The first model check, started before the VAD stop (at its pause) on the audio so
        far, for `decide(early=...)` to use: on a slow CPU a check takes longer than the rest
        of the stop's silence, and this takes it off the caller's wait. None when no model
        would run."""
        if self.settings.detector == "vad" or self.model is None:
            return None
        task = asyncio.ensure_future(self.model.predict(get_audio()))
        # A check dropped unread (the caller went on) may have failed: that is no news.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    async def decide(
        self,
        get_audio: Callable[[], np.ndarray],
        silence_ms_at_start: float = 0,
        get_text: Callable[[], str] = _no_text,
        scale: Scale | None = None,
        early: asyncio.Future[float] | None = None,
    ) -> EndOfTurnDecision:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        # The true end of speech, on the loop clock.
        speech_end = t0 - max(0.0, silence_ms_at_start) / 1000.0

        def elapsed_ms() -> float:
            return (loop.time() - t0) * 1000.0

        s = self.settings
        if s.detector == "vad" or self.model is None:
            return EndOfTurnDecision("vad", None, elapsed_ms())

        def deadline(p: float | None) -> float:
            budget = silence_budget_ms(p, get_text(), s)
            if scale is not None:
                budget = scale(budget)
            return speech_end + budget / 1000.0

        if silence_ms_at_start >= s.max_wait_ms:
            return EndOfTurnDecision("timeout", None, elapsed_ms())  # no budget is longer
        # Nothing is known before the first check: never end the turn before it.
        probability: float | None = None
        next_check = loop.time()
        while True:
            now = loop.time()
            if probability is not None and now >= deadline(probability):
                return EndOfTurnDecision("timeout", probability, elapsed_ms())
            if now >= next_check:
                limit = (s.max_wait_ms / 1000.0 if probability is None
                         else deadline(probability) - now)
                try:
                    # Never let a slow (overloaded) model push the decision past the budget.
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
                    # cancellation that lands as the model answers, and the caller who resumed
                    # speaking would get a decision anyway.
                    async with asyncio.timeout(max(limit, 0.001)):
                        if early is not None:  # the first check, started at the pause
                            check, early = early, None
                            probability = await check
                        else:
                            probability = await self.model.predict(get_audio())
                except TimeoutError:
                    return EndOfTurnDecision("timeout", probability, elapsed_ms())
                except Exception as exc:
                    # A broken model must not stall the call: fall back to the VAD's decision.
                    log.warning("end-of-turn model failed, ending the turn on VAD stop: %r",
                                exc)
                    return EndOfTurnDecision("vad", probability, elapsed_ms())
                next_check = loop.time() + s.recheck_ms / 1000.0
                if deadline(probability) <= speech_end:
                    return EndOfTurnDecision("model", probability, elapsed_ms())
                continue
            # Between checks the transcript may change (the final arriving and finishing the
            # sentence), which moves the deadline: look again every TEXT_POLL_S.
            pause = min(next_check, deadline(probability)) - loop.time()
            await asyncio.sleep(max(0.0, min(TEXT_POLL_S, pause)))
