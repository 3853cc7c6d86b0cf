"""What the engine needs from the outside world, as structural types.

`providers/` implements the STT/LLM/TTS shapes (see providers/base.py); the service layer
implements the transport side (`PlayoutSink`). The engine imports neither.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pipelines.audio.inbox import AudioFormat
from pipelines.audio.mixer import Background


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


@runtime_checkable
class PauseFinalizingStream(Protocol):
    """An STT stream whose `flush` is one cheap round trip to a streaming recogniser (Deepgram's
    `Finalize`), which goes on recognising what follows as the same stream. The engine then asks
    for the final at a short pause, before the VAD's stop, so that the words are in when the end
    of the turn is decided. Batch engines (Whisper, a transcription API) transcribe what they
    hold at each flush: splitting utterances at every pause would cost them accuracy and CPU,
    so they do not say this."""

    @property
    def finalizes_at_pauses(self) -> bool: ...


class STTLike(Protocol):
    async def open(self, sample_rate: int, language: str) -> STTStreamLike: ...


@runtime_checkable
class FormatChoosingSTT(Protocol):
    """An STT that takes more than one input format. Told the carrier's format, it names the
    one it wants (e.g. a μ-law leg's own bytes, untouched), and `open_as` opens a stream that
    is pushed audio in that format: int16 PCM, or μ-law bytes as a uint8 array. An STT without
    it is opened at 16 kHz PCM."""

    def input_format(self, carrier: AudioFormat) -> AudioFormat: ...
    async def open_as(self, fmt: AudioFormat, language: str) -> STTStreamLike: ...


class LLMLike(Protocol):
    # Yields objects with .kind == "text" (.text), "tool_call" (.id .name .arguments) or
    # "usage" (.provider .model .metric .quantity).
    def stream(
        self, messages: list[dict[str, Any]], tools: list[Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> AsyncIterator[Any]: ...


@runtime_checkable
class PrefillingLLM(Protocol):
    """An LLM that can evaluate a prompt ahead of the first turn (a local one with a prompt
    cache); the engine checks for it instead of assuming every LLM has it."""

    async def prefill(self, messages: list[Any], tools: list[Any] | None = None) -> bool: ...


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


@runtime_checkable
class UsageLike(Protocol):
    """An LLM stream item of kind "usage": what a round cost."""

    kind: str
    provider: str
    model: str
    metric: str
    quantity: float


@runtime_checkable
class ReportsToolEvents(Protocol):
    """A tool executor that emits tool.* events itself (the service's): the engine must not
    echo them, or consumers would see every tool call twice."""

    reports_events: bool


@runtime_checkable
class EncodedPlayoutSink(Protocol):
    """A sink that can take audio already in its carrier's codec (TTS μ-law for a μ-law leg)
    and send those bytes as they are: no decode, resample or re-encode."""

    def carries(self, fmt: AudioFormat) -> bool: ...
    async def write_encoded(self, payload: bytes, fmt: AudioFormat) -> None: ...


@runtime_checkable
class BackgroundMixingSink(Protocol):
    """A sink that can lay a background sound under the call (`audio.mix`): it keeps playing
    while the agent is silent and the agent's speech is mixed over it, on the sink's own pacing
    clock. A clear (barge-in) drops the agent's queued speech, never the background, and the
    background does not count as speech (segments' played_ms and acks are the agent's alone).
    `None` stops it."""

    def set_background(self, background: Background | None) -> None: ...
