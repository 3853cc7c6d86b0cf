"""Phonebooth's own turn-taking for a model session (`turn_detection: phonebooth`): what the
conversation listens with.

`CallerListener` runs the call's VAD stream over the caller's 16 kHz frames and keeps the audio
the end-of-turn model (smart-turn) looks at: the current turn, ≤ 8 s, from just before its
onset. The conversation reacts to the VAD's start and stop events (barge-in, handing the turn
to the model); a failing VAD is reported once and the call goes on without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pipelines.audio.ringbuffer import RingBuffer
from pipelines.turn.base import EndOfTurnDecision
from pipelines.vad.base import VadEvent, VadStream

log = logging.getLogger(__name__)

FRAME_RATE = 16000
TURN_AUDIO_MS = 8000  # what the end-of-turn model looks at
PREROLL_MS = 300  # audio kept before the first speech onset of a turn


class EndOfTurnDecider(Protocol):
    """pipelines.turn.endpointing.EndpointingPolicy."""

    async def decide(self, get_audio: Callable[[], np.ndarray],
                     silence_ms_at_start: float = 0) -> EndOfTurnDecision: ...


@dataclass
class TurnTaking:
    """Phonebooth's own turn-taking for a model session: the same VAD stream and end-of-turn
    policy (smart-turn) the cascaded pipeline gets from the engine models."""

    vad: VadStream
    endpointing: EndOfTurnDecider


class CallerListener:
    def __init__(self, turns: TurnTaking, on_vad_error: Callable[[BaseException], None]) -> None:
        self._turns = turns
        self._on_vad_error = on_vad_error
        self._ring = RingBuffer(FRAME_RATE * (TURN_AUDIO_MS + PREROLL_MS) // 1000)
        self._stream_ms = 0.0  # caller audio heard so far (the VAD's timeline)
        self._turn_start_ms: float | None = None
        self._vad_failed = False

    async def hear(self, frame: np.ndarray) -> VadEvent | None:
        """One caller frame through the VAD: its start/stop event, if any."""
        self._ring.append(frame)
        event: VadEvent | None = None
        try:
            event = await self._turns.vad.process(frame)
        except Exception as exc:
            if not self._vad_failed:  # report once; a broken VAD must not kill the call
                self._vad_failed = True
                log.warning("s2s: VAD failed: %r", exc)
                self._on_vad_error(exc)
        self._stream_ms += len(frame) * 1000.0 / FRAME_RATE
        if event is not None and event.kind == "start" and self._turn_start_ms is None:
            self._turn_start_ms = event.at_ms
        return event

    def silence_after(self, stop: VadEvent) -> float:
        """The VAD reports a stop after its hangover; budgets count from the true end."""
        return max(0.0, self._stream_ms - stop.at_ms)

    def turn_audio(self) -> np.ndarray:
        """The turn's audio for the end-of-turn model: ≤ 8 s, from just before its onset."""
        start = self._turn_start_ms if self._turn_start_ms is not None else 0.0
        start = max(start - PREROLL_MS, self._stream_ms - TURN_AUDIO_MS)
        return self._ring.last(int((self._stream_ms - start) * FRAME_RATE / 1000))

    async def decide(self, silence_ms: float) -> EndOfTurnDecision:
        """Whether the turn is over; past the decision, a resumed caller is the next turn."""
        decision = await self._turns.endpointing.decide(self.turn_audio, silence_ms)
        self._turn_start_ms = None
        return decision

    async def aclose(self) -> None:
        await self._turns.vad.aclose()
