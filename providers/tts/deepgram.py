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
from contextlib import aclosing
from typing import ClassVar, Literal
from urllib.parse import urlencode

from pydantic import Field

from providers.base import AudioChunk, SecretRef
from providers.http import CloudConfig, resolve_api_key
from providers.tts.audio_out import FormattedTTS, stream_speech


class DeepgramTTSConfig(CloudConfig):
    api_key: SecretRef
    base_url: str = Field("https://api.deepgram.com", pattern=r"^https?://")
    model: str = "aura-2-thalia-en"
    output: Literal["pcm_8000", "pcm_16000", "pcm_24000", "pcm_48000", "mulaw_8000"] = \
        "pcm_16000"


class DeepgramTTS(FormattedTTS):
    name: ClassVar[str] = "deepgram"
    Config: ClassVar[type[DeepgramTTSConfig]] = DeepgramTTSConfig
    config: DeepgramTTSConfig

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
        async with aclosing(stream_speech(self.ctx, self.name, cfg, url, body, headers,
                                          self._spec, model, len(text))) as chunks:
            async for chunk in chunks:
                yield chunk
