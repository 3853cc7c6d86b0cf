"""The end-of-turn contract: probability that the user has finished speaking."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np


class EndOfTurnModel(Protocol):
    async def predict(self, audio: np.ndarray) -> float:
        """P(turn complete) for the user's audio (16 kHz int16, the last ≤ 8 s is used)."""
        ...


@dataclass(slots=True)
class EndOfTurnDecision:
    trigger: Literal["model", "timeout", "vad"]
    probability: float | None
    # ms from VAD stop to the decision (model time included)
    decided_after_ms: float
