"""What the engine needs from the outside world, as structural types.

`providers/` implements the STT/LLM/TTS shapes (see providers/base.py); the service layer
implements the transport side (`PlayoutSink`). The engine imports neither.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

import numpy as np


class TranscriptLike(Protocol):
    text: str
    is_final: bool
    confidence: float
    start_ms: int
    end_ms: int


class STTStreamLike(Protocol):
    async def push(self, frame: np.ndarray) -> None: ...
    async def flush(self) -> None: ...
    def events(self) -> AsyncIterator[TranscriptLike]: ...
    async def aclose(self) -> None: ...


class STTLike(Protocol):
    async def open(self, sample_rate: int, language: str) -> STTStreamLike: ...


class LLMLike(Protocol):
    # Yields objects with .kind == "text" (.text), "tool_call" (.id .name .arguments) or
    # "usage" (.provider .model .metric .quantity).
    def stream(
        self, messages: list[dict[str, Any]], tools: list[Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> AsyncIterator[Any]: ...


class AudioChunkLike(Protocol):
    samples: np.ndarray
    sample_rate: int
    encoding: str


class TTSLike(Protocol):
    sample_rate: int
    def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[AudioChunkLike]: ...


@runtime_checkable
class PlayoutSink(Protocol):
    """The transport's outgoing audio path (e.g. the Plivo playout writer).

    A segment is `start_segment`, `write`s (any rate, int16), `end_segment`; `wait_played`
    resolves when the far end confirms it was heard (or it was cleared), `played_ms` says how
    much of it was heard so far. `clear` drops everything queued and returns how many ms of the
    current segment were actually heard; the segments it cut keep that `played_ms`, writes into
    the one still open are dropped, and audio after a clear goes into a new segment.
    """

    async def start_segment(self, segment_id: str) -> None: ...
    async def write(self, samples: np.ndarray, sample_rate: int) -> None: ...
    async def end_segment(self) -> None: ...
    async def wait_played(self, segment_id: str) -> None: ...
    def played_ms(self, segment_id: str) -> float: ...
    async def clear(self) -> float: ...
    def is_idle(self) -> bool: ...
    async def send_dtmf(self, digits: str) -> None: ...
