"""The VAD contract the conversation uses: feed 20 ms frames, get speech start/stop events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from pipelines.settings import VadSettings


@dataclass(slots=True)
class VadEvent:
    # "quiet" (a few tens of ms of silence) and "pause" (halfway to a stop): the caller went
    # quiet; the segment stays open, and a "stop" with the same `at_ms` follows if the silence
    # lasts; "resume": speech again after either, before the stop (the segment goes on).
    # "onset": a few tens of ms of speech, not yet a start; "onset_lost": that run ended
    # without becoming one (for "onset_lost", `at_ms` is where it ended).
    kind: Literal["start", "stop", "pause", "quiet", "resume", "onset", "onset_lost"]
    # Stream time (ms since the first frame) at which speech really started/stopped, i.e.
    # backdated by the start/stop hysteresis, so latency can be measured from the true edge.
    at_ms: float
    # For "stop", "pause", "quiet" and "onset_lost": how long the speech lasted.
    speech_ms: float = 0.0


class VadStream(Protocol):
    """Per-call VAD state. Frames are 20 ms (320 samples) mono int16 at 16 kHz."""

    speaking: bool
    # Latest speech probability (0..1)
    probability: float

    async def process(self, frame: np.ndarray) -> VadEvent | None: ...

    async def process_frames(self, frames: Sequence[np.ndarray]) -> list[VadEvent | None]:
        """`process` for each frame in order, the results in a list, in one model round
        trip: what a call that fell behind uses to catch up."""
        ...

    def reset(self) -> None: ...

    def retune(self, settings: VadSettings) -> None:
        """New thresholds from the next frame on (the engine itself cannot change)."""
        ...

    async def aclose(self) -> None: ...
