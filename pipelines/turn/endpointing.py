"""Endpointing: when has the user finished their turn?

The conversation calls `decide()` right at VAD stop and cancels the task if speech resumes.
- detector "vad" (or no model loaded): the VAD stop ends the turn at once.
- detector "smart_turn": run the model on the turn's audio (last ≤ 8 s). P ≥ threshold ends the
  turn now. Otherwise the user may just be pausing mid-sentence: wait, re-run the model every
  `recheck_ms` on the audio grown by the silence heard since (a longer pause after a complete
  thought raises P), and give up waiting `max_wait_ms` after the end of speech.

Budgets are measured from the true end of speech: the VAD reports stop only after `stop_ms` of
silence, which the caller passes as `silence_ms_at_start`, so `max_wait_ms` means the same pause
length whatever the VAD settings. `decided_after_ms` is measured from the call (the VAD stop
event), with time.monotonic, model time included.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import numpy as np

from pipelines.settings import TurnSettings
from pipelines.turn.base import EndOfTurnDecision, EndOfTurnModel

log = logging.getLogger(__name__)


class EndpointingPolicy:
    def __init__(self, model: EndOfTurnModel | None, settings: TurnSettings) -> None:
        self.model = model
        self.settings = settings

    async def decide(
        self, get_audio: Callable[[], np.ndarray], silence_ms_at_start: float = 0
    ) -> EndOfTurnDecision:
        t0 = time.monotonic()

        def elapsed_ms() -> float:
            return (time.monotonic() - t0) * 1000.0

        s = self.settings
        if s.detector == "vad" or self.model is None:
            return EndOfTurnDecision("vad", None, elapsed_ms())

        deadline = t0 + max(0.0, s.max_wait_ms - max(0.0, silence_ms_at_start)) / 1000.0
        probability: float | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return EndOfTurnDecision("max_wait", probability, elapsed_ms())
            try:
                # Never let a slow (overloaded) model push the decision past max_wait.
                probability = await asyncio.wait_for(self.model.predict(get_audio()), remaining)
            except TimeoutError:
                return EndOfTurnDecision("max_wait", probability, elapsed_ms())
            except Exception as exc:
                # A broken model must not stall the call: fall back to the VAD's decision.
                log.warning("end-of-turn model failed, ending the turn on VAD stop: %r", exc)
                return EndOfTurnDecision("vad", probability, elapsed_ms())
            if probability >= s.threshold:
                return EndOfTurnDecision("model", probability, elapsed_ms())
            pause = min(s.recheck_ms / 1000.0, deadline - time.monotonic())
            if pause > 0:
                await asyncio.sleep(pause)
            if time.monotonic() >= deadline:
                return EndOfTurnDecision("max_wait", probability, elapsed_ms())
