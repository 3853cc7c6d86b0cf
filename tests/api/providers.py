"""Tiny in-process providers for API tests (names prefixed `apitest_`).

They exist so agent configs can be validated before the real adapters are installed, and they
exercise the parts validation looks at: option models, credential references, model files.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from pydantic import Field

from providers import registry
from providers.base import (
    AudioChunk,
    LLMEvent,
    LLMProvider,
    Message,
    ProviderConfig,
    SecretRef,
    STTProvider,
    STTStream,
    TextDelta,
    ToolSpec,
    Transcript,
    TTSProvider,
    Usage,
)


class _EchoStream(STTStream):
    """Reports how many frames it heard when flushed."""

    def __init__(self) -> None:
        self._frames = 0
        self._queue: asyncio.Queue[Transcript | None] = asyncio.Queue()

    async def push(self, frame: np.ndarray) -> None:
        self._frames += 1

    async def flush(self) -> None:
        await self._queue.put(Transcript(text=f"{self._frames} frames", is_final=True))
        self._frames = 0

    async def events(self) -> AsyncIterator[Transcript]:
        while (item := await self._queue.get()) is not None:
            yield item

    async def aclose(self) -> None:
        await self._queue.put(None)


class ApiTestSTT(STTProvider):
    name = "apitest_stt"

    class Config(ProviderConfig):
        model: str = "tiny"
        # What the demo agent sets for its real STT (whisper), which this one stands in for.
        beam_size: int = 1
        prompt: str = ""

    async def open(self, sample_rate: int, language: str) -> STTStream:
        return _EchoStream()


class ApiTestLLM(LLMProvider):
    name = "apitest_llm"

    class Config(ProviderConfig):
        model: str = "echo-1"
        temperature: float = Field(0.7, ge=0, le=2)
        api_key: SecretRef | None = None
        # What the demo agent sets on llama_cpp (tests register this class under that name).
        max_tokens: int = Field(120, ge=1)
        max_sentences: int | None = Field(None, ge=1)
        stop: list[str] = Field(default_factory=list)
        repeat_penalty: float = Field(1.1, ge=1.0, le=2.0)

    async def stream(
        self,
        messages: list[Message],
        tools: list[ToolSpec] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> AsyncIterator[LLMEvent]:
        last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        yield TextDelta(f"You said: {last}")
        yield Usage(self.name, self.model_name, "output_tokens", 3)


class ApiTestTTS(TTSProvider):
    name = "apitest_tts"
    sample_rate = 16000

    class Config(ProviderConfig):
        # A model file under models_dir this voice needs (None: needs none).
        model_file: str | None = None

    @classmethod
    def model_files(cls, config: ProviderConfig) -> list[str]:
        assert isinstance(config, cls.Config)
        return [config.model_file] if config.model_file else []

    async def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[AudioChunk]:
        # 10 ms of silence per character: enough shape for a test, no model.
        yield AudioChunk(np.zeros(160 * len(text), dtype=np.int16), self.sample_rate)


def register_test_providers() -> None:
    for cls in (ApiTestSTT, ApiTestLLM, ApiTestTTS):
        registry.register(cls)


def agent_config(**overrides: Any) -> dict[str, Any]:
    """A valid agent config using the test providers."""
    config: dict[str, Any] = {
        "name": "Test receptionist",
        "prompt": "You are a helpful receptionist.",
        "stt": {"provider": "apitest_stt"},
        "llm": {"provider": "apitest_llm", "temperature": 0.3},
        "tts": {"provider": "apitest_tts"},
    }
    config.update(overrides)
    return config
