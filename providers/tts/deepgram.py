"""TTS `deepgram`: Deepgram Aura over the streaming REST endpoint.

Wire: `POST https://api.deepgram.com/v1/speak?model=aura-2-…&encoding=linear16|mulaw&
sample_rate=…&container=none` with `Authorization: Token KEY` and `{"text": "…"}`; the response
body is raw audio streamed as it is synthesised (container=none, so no WAV header to strip).
Chosen over the WebSocket variant because the engine hands us whole sentences: one request per
sentence on a pooled keep-alive connection has no per-sentence handshake, and cancelling is just
closing the response. `voice` (or the agent's voice) is the Aura model name.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import ClassVar, Literal
from urllib.parse import urlencode

import httpx
from pydantic import Field

from providers.base import AudioChunk, ProviderContext, SecretRef, TTSProvider
from providers.http import CloudConfig, open_stream, resolve_api_key, shared_client
from providers.tts.audio_out import ChunkDecoder, OutputSpec
from providers.usage import FirstResultClock, report_usage


class DeepgramTTSConfig(CloudConfig):
    api_key: SecretRef
    base_url: str = Field("https://api.deepgram.com", pattern=r"^https?://")
    model: str = "aura-2-thalia-en"
    output: Literal["pcm_8000", "pcm_16000", "pcm_24000", "pcm_48000", "mulaw_8000"] = \
        "pcm_16000"


class DeepgramTTS(TTSProvider):
    name: ClassVar[str] = "deepgram"
    Config: ClassVar[type[DeepgramTTSConfig]] = DeepgramTTSConfig
    config: DeepgramTTSConfig

    def __init__(self, config: DeepgramTTSConfig, ctx: ProviderContext) -> None:
        super().__init__(config, ctx)
        self._spec = OutputSpec.parse(config.output)
        self.sample_rate = self._spec.sample_rate

    def prefers_mulaw(self) -> bool:
        return self._spec.encoding == "mulaw"

    async def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[AudioChunk]:
        if not text.strip():
            return
        cfg = self.config
        key = await resolve_api_key(self.ctx, cfg.api_key, self.name)
        model = voice or cfg.model
        query = urlencode({
            "model": model,
            "encoding": "mulaw" if self._spec.encoding == "mulaw" else "linear16",
            "sample_rate": self._spec.sample_rate,
            "container": "none",
        })
        url = f"{cfg.base_url.rstrip('/')}/v1/speak?{query}"
        body = json.dumps({"text": text}).encode()
        headers = {"authorization": f"Token {key}", "content-type": "application/json"}
        client = shared_client(self.ctx)
        timeout = cfg.httpx_timeout()

        def build() -> httpx.Request:
            return client.build_request("POST", url, content=body, headers=headers,
                                        timeout=timeout)

        clock = FirstResultClock(self.ctx, self.name)
        decoder = ChunkDecoder(self._spec)
        async with open_stream(client, self.name, build, cfg.retry_policy()) as response:
            # Deepgram bills the characters of an accepted request, even if we stop listening.
            report_usage(self.ctx, self.name, model, "characters", float(len(text)))
            async for data in response.aiter_bytes():
                chunk = decoder.feed(data)
                if chunk is not None:
                    clock.mark()
                    yield chunk
