"""TTS `openai`: the speech endpoint, streamed as raw PCM.

Wire: `POST {base_url}/audio/speech` with `{"model", "input", "voice", "response_format": "pcm"}`
(plus optional `speed` / `instructions`); the body streams 24 kHz 16-bit little-endian mono PCM
as it is generated. `base_url` also reaches OpenAI-compatible speech servers (e.g. Kokoro or
speaches); set `sample_rate` if theirs emits PCM at another rate. Cancelling closes the response,
which drops the connection and stops generation.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, ClassVar

from pydantic import Field, model_validator

from providers.base import AudioChunk, ProviderContext, TTSProvider
from providers.http import CloudConfig, resolve_api_key
from providers.llm.openai import OPENAI_BASE_URL
from providers.tts.audio_out import OutputSpec, stream_speech


class OpenAITTSConfig(CloudConfig):
    model: str = "gpt-4o-mini-tts"
    voice: str = "alloy"
    base_url: str = Field(OPENAI_BASE_URL, pattern=r"^https?://")
    speed: float | None = Field(None, ge=0.25, le=4.0)
    # Style prompt (gpt-4o-mini-tts only), e.g. "Speak warmly and briskly."
    instructions: str | None = None
    sample_rate: int = Field(24000, ge=8000, le=48000)
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _key_needed(self) -> OpenAITTSConfig:
        if self.api_key is None and self.base_url == OPENAI_BASE_URL:
            raise ValueError("api_key is required for OpenAI")
        return self


class OpenAITTS(TTSProvider):
    name: ClassVar[str] = "openai"
    Config: ClassVar[type[OpenAITTSConfig]] = OpenAITTSConfig
    config: OpenAITTSConfig

    def __init__(self, config: OpenAITTSConfig, ctx: ProviderContext) -> None:
        super().__init__(config, ctx)
        self._spec = OutputSpec("pcm16", config.sample_rate)
        self.sample_rate = config.sample_rate

    async def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[AudioChunk]:
        if not text.strip():
            return
        cfg = self.config
        key = await resolve_api_key(self.ctx, cfg.api_key, self.name, required=False)
        payload: dict[str, Any] = {"model": cfg.model, "input": text,
                                   "voice": voice or cfg.voice, "response_format": "pcm"}
        if cfg.speed is not None:
            payload["speed"] = cfg.speed
        if cfg.instructions:
            payload["instructions"] = cfg.instructions
        body = json.dumps(payload).encode()
        headers = {"content-type": "application/json", **cfg.headers}
        if key:
            headers["authorization"] = f"Bearer {key}"
        url = f"{cfg.base_url.rstrip('/')}/audio/speech"
        async with aclosing(stream_speech(self.ctx, self.name, cfg, url, body, headers,
                                          self._spec, cfg.model, len(text))) as chunks:
            async for chunk in chunks:
                yield chunk
