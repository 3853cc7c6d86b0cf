"""Caller audio on its way from the carrier edge to the engine: one bounded queue per call.

The edge decodes each carrier frame to PCM at the carrier's own rate (8 kHz for a μ-law phone
leg) and keeps the carrier's bytes alongside, so nothing is resampled or transcoded before a
consumer asks for it: the engine resamples for VAD and end of turn (16 kHz), and hands an STT
that takes the carrier's codec the very bytes the carrier sent (`pipelines.engine.caller_audio`).

`AudioInbox` is the only queue between the socket and the engine. When the engine falls behind
by more than `max_frames` the oldest frame is dropped and counted here, once: the one drop
counter a call has for its caller audio.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

Encoding = Literal["pcm16", "mulaw"]
INBOX_MAX_FRAMES = 150  # 3 s of caller audio


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """A stream's audio format: int16 PCM or G.711 μ-law bytes at `sample_rate`."""

    sample_rate: int
    encoding: Encoding = "pcm16"


@dataclass(frozen=True, slots=True)
class CallerFrame:
    """About 20 ms of caller audio as the carrier delivered it.

    `pcm`: mono int16 at `rate`; `mulaw`: the carrier's own G.711 bytes for the same samples
    when the leg is μ-law (None otherwise)."""

    pcm: np.ndarray
    rate: int
    mulaw: bytes | None = None

    @property
    def duration_ms(self) -> float:
        return len(self.pcm) * 1000.0 / self.rate


class AudioInbox:
    """Bounded FIFO of `CallerFrame`s with one drop counter; `close()` ends the readers."""

    def __init__(self, max_frames: int = INBOX_MAX_FRAMES, name: str = "") -> None:
        if max_frames < 1:
            raise ValueError("max_frames must be at least 1")
        self.max_frames = max_frames
        self.name = name
        self._frames: deque[CallerFrame] = deque()
        self._ready = asyncio.Event()
        self._closed = False
        self._closed_event = asyncio.Event()
        self.frames_in = 0
        self.dropped = 0  # frames lost because the engine fell behind

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frame: CallerFrame) -> None:
        if self._closed:
            return
        if len(self._frames) >= self.max_frames:
            self._frames.popleft()
            self.dropped += 1
            if self.dropped in (1, 50) or self.dropped % 500 == 0:
                log.warning("%s: engine is behind; dropped %d caller frame(s)",
                            self.name or "call", self.dropped)
        self._frames.append(frame)
        self.frames_in += 1
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._closed_event.set()
        self._ready.set()

    async def get(self) -> CallerFrame | None:
        """The next frame; None once closed and drained."""
        while not self._frames:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._frames.popleft()

    def take_waiting(self) -> list[CallerFrame]:
        """Every frame queued now, without waiting (the engine catching up)."""
        frames = list(self._frames)
        self._frames.clear()
        return frames

    async def wait_closed(self) -> None:
        """Returns once the far end is gone (the inbox was closed)."""
        await self._closed_event.wait()

    async def __aiter__(self) -> AsyncIterator[CallerFrame]:
        while (frame := await self.get()) is not None:
            yield frame
