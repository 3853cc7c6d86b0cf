"""The VAD contract the conversation uses: feed 20 ms frames, get speech start/stop events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from pipelines.settings import VadSettings


@dataclass(slots=True)
class VadEvent:
    kind: Literal["start", "stop"]
    # Stream time (ms since the first frame) at which speech really started/stopped, i.e.
    # backdated by the start/stop hysteresis, so latency can be measured from the true edge.
    at_ms: float
    # For "stop": how long the speech lasted.
    speech_ms: float = 0.0


class VadStream(Protocol):
    """Per-call VAD state. Frames are 20 ms (320 samples) mono int16 at 16 kHz."""

    speaking: bool
    # Latest speech probability (0..1)
    probability: float

    async def process(self, frame: np.ndarray) -> VadEvent | None: ...

    def reset(self) -> None: ...

    def retune(self, settings: VadSettings) -> None:
        """New thresholds from the next frame on (the engine itself cannot change)."""
        ...

    async def aclose(self) -> None: ...
