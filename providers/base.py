"""Provider contracts: STT, LLM and TTS adapters implement these.

Every adapter is async and cancellable, carries a pydantic `Config` validated when an agent is
saved, and reports usage and time-to-first-byte through its `ProviderContext`. The engine in
`pipelines/` never imports this module: it relies on the same shapes structurally
(`pipelines/ports.py`), so the dependency stays one-way.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

# "s2s": a speech-to-speech model that replaces the whole STT → LLM → TTS chain.
Kind = Literal["stt", "llm", "tts", "s2s"]


# ---------------------------------------------------------------------------------------------
# Data that flows through providers
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Transcript:
    text: str
    is_final: bool
    confidence: float = 1.0
    start_ms: int = 0
    end_ms: int = 0


@dataclass(slots=True)
class TextDelta:
    text: str
    kind: Literal["text"] = "text"


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]
    kind: Literal["tool_call"] = "tool_call"


@dataclass(slots=True)
class Usage:
    """One metered quantity, e.g. ("input_tokens", 512) or ("audio_seconds", 3.2)."""

    provider: str
    model: str
    metric: str
    quantity: float
    kind: Literal["usage"] = "usage"


@dataclass(slots=True)
class AudioChunk:
    """Mono int16 PCM at `sample_rate`. `encoding="mulaw"` carries raw G.711 bytes instead
    (used when a vendor can produce the telephony codec directly and no resampling is needed)."""

    samples: np.ndarray
    sample_rate: int
    encoding: Literal["pcm16", "mulaw"] = "pcm16"


LLMEvent = TextDelta | ToolCall | Usage

# Chat messages use the OpenAI chat shape as the neutral format:
#   {"role": "system"|"user"|"assistant"|"tool", "content": str,
#    "tool_calls": [{"id", "name", "arguments": dict}]  (assistant only),
#    "tool_call_id": str  (tool only)}
Message = dict[str, Any]


@dataclass(slots=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class ProviderError(Exception):
    """Any vendor failure, mapped to one type carrying the vendor's own message.

    `retryable` tells the fallback wrapper that another attempt (same or next provider) may work.
    Never put credentials in the message.
    """

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = True,
        code: str | None = None,
    ) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.message = message
        self.status = status
        self.retryable = retryable
        self.code = code


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


class SecretRef(BaseModel):
    """A credential by reference: a stored credential name or an environment variable."""

    model_config = ConfigDict(extra="forbid")
    credential: str | None = None
    env: str | None = None


class ProviderConfig(BaseModel):
    """Base for every adapter's config model. Unknown keys are errors (typos surface at save)."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class ProviderContext:
    """What the host gives an adapter instance (one instance per call and kind)."""

    resolve_secret: Callable[[SecretRef], Awaitable[str]]
    models_dir: str
    # (Usage) -> None; the host attributes usage to the session and provider.
    on_usage: Callable[[Usage], None] = lambda u: None
    # (provider, metric, value_ms) -> None; e.g. ("deepgram", "ttfb_ms", 212.0)
    on_metric: Callable[[str, str, float], None] = lambda p, m, v: None
    # Shared objects (loaded models, HTTP clients) keyed by the adapter; lives for the process.
    shared: dict[str, Any] = field(default_factory=dict)


class Provider(abc.ABC):
    name: ClassVar[str]
    kind: ClassVar[Kind]
    Config: ClassVar[type[ProviderConfig]]
    # Model files this adapter needs (names resolved against models_dir), checked by `validate`.
    required_models: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: ProviderConfig, ctx: ProviderContext) -> None:
        self.config = config
        self.ctx = ctx

    @classmethod
    def secret_refs(cls, config: ProviderConfig) -> list[SecretRef]:
        """Credentials this config references, for validation without resolving them."""
        return [v for v in config.__dict__.values() if isinstance(v, SecretRef)]

    @classmethod
    def model_files(cls, config: ProviderConfig) -> list[str]:
        """Model file paths (relative to models_dir or absolute) this config needs."""
        return list(cls.required_models)

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release per-instance resources (sockets, clients)."""

    @property
    def model_name(self) -> str:
        return str(getattr(self.config, "model", "") or self.name)


# ---------------------------------------------------------------------------------------------
# The three contracts
# ---------------------------------------------------------------------------------------------


class STTStream(abc.ABC):
    """One utterance-spanning recognition stream for a call.

    `push` takes 20 ms mono int16 frames at the rate given to `open`. `flush` asks the engine to
    finalise what it has (end of user turn); the resulting final Transcript arrives on `events`.
    """

    @abc.abstractmethod
    async def push(self, frame: np.ndarray) -> None: ...

    @abc.abstractmethod
    async def flush(self) -> None: ...

    @abc.abstractmethod
    def events(self) -> AsyncIterator[Transcript]: ...

    @abc.abstractmethod
    async def aclose(self) -> None: ...


TranscriptQueue = asyncio.Queue[Transcript | BaseException | None]


async def queued_transcripts(out: TranscriptQueue) -> AsyncIterator[Transcript]:
    """An STT stream's `events()` from its output queue: transcripts until the end (None) or
    a failure (an exception, raised). Either is put back, so every later reader ends or fails
    the same way instead of waiting for ever."""
    while True:
        item = await out.get()
        if item is None or isinstance(item, BaseException):
            out.put_nowait(item)
            if item is None:
                return
            raise item
        yield item


class STTProvider(Provider):
    kind: ClassVar[Kind] = "stt"

    @abc.abstractmethod
    async def open(self, sample_rate: int, language: str) -> STTStream: ...


class LLMProvider(Provider):
    kind: ClassVar[Kind] = "llm"

    @abc.abstractmethod
    def stream(
        self,
        messages: list[Message],
        tools: list[ToolSpec] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> AsyncIterator[LLMEvent]:
        """Yield TextDelta as tokens arrive, complete ToolCall objects, and Usage at the end."""


class TTSProvider(Provider):
    kind: ClassVar[Kind] = "tts"
    # Native output rate; chunks may still carry their own rate.
    sample_rate: int = 16000

    @abc.abstractmethod
    def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[AudioChunk]:
        """Yield audio for `text` as soon as it is available. Cancelling the iterator must stop
        the vendor stream promptly."""

    def prefers_mulaw(self) -> bool:
        """True when asked to output μ-law 8 kHz directly (telephony passthrough)."""
        return False
