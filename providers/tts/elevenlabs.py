"""TTS `elevenlabs`: the stream-input WebSocket, one connection per sentence.

Wire: `wss://api.elevenlabs.io/v1/text-to-speech/{voice_id}/stream-input?model_id=…&
output_format=pcm_16000|ulaw_8000…&auto_mode=true` with the `xi-api-key` header. We send the
initial `{"text": " ", "voice_settings": …, "generation_config": …}`, the sentence with
`flush: true`, and the closing `{"text": ""}` straight away; the server answers
`{"audio": base64, "normalizedAlignment": …}` messages and finally `{"isFinal": true}`, then
closes. Errors come as `{"message", "error", "code"}` and/or a close frame (1008 with a reason).

Why one socket per `synthesize()`: stream-input only marks the end of *all* input (`isFinal`),
so a shared socket could not tell where one sentence's audio ends. `auto_mode` suits the whole
sentences the engine sends (no server-side chunk schedule buffering). With `output: mulaw_8000`
ElevenLabs emits G.711 μ-law at 8 kHz, passed through untouched to a μ-law phone leg.
Cancelling closes the socket (the close frame goes out immediately), which stops generation.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Literal
from urllib.parse import quote, urlencode

from pydantic import Field

from providers.base import AudioChunk, ProviderError, SecretRef
from providers.http import (
    CloudConfig,
    redact,
    resolve_api_key,
    vendor_message,
    ws_close_quietly,
    ws_closed_error,
    ws_connect,
)
from providers.tts.audio_out import ChunkDecoder, FormattedTTS
from providers.usage import FirstResultClock, report_usage

# Our output names → ElevenLabs `output_format` values.
_FORMATS = {"pcm_16000": "pcm_16000", "pcm_22050": "pcm_22050", "pcm_24000": "pcm_24000",
            "pcm_44100": "pcm_44100", "mulaw_8000": "ulaw_8000"}


class ElevenLabsTTSConfig(CloudConfig):
    api_key: SecretRef
    base_url: str = Field("wss://api.elevenlabs.io", pattern=r"^wss?://")
    voice_id: str = "21m00Tcm4TlvDq8ikWAM"
    model: str = "eleven_flash_v2_5"
    output: Literal["pcm_16000", "pcm_22050", "pcm_24000", "pcm_44100", "mulaw_8000"] = \
        "pcm_16000"
    language_code: str | None = None
    stability: float | None = Field(None, ge=0, le=1)
    similarity_boost: float | None = Field(None, ge=0, le=1)
    style: float | None = Field(None, ge=0, le=1)
    use_speaker_boost: bool | None = None
    speed: float | None = Field(None, ge=0.7, le=1.2)
    auto_mode: bool = True
    chunk_length_schedule: list[int] | None = None
    enable_ssml_parsing: bool = False
    apply_text_normalization: Literal["auto", "on", "off"] | None = None
    connect_timeout_s: float = Field(5.0, gt=0, le=60)


class ElevenLabsTTS(FormattedTTS):
    name: ClassVar[str] = "elevenlabs"
    Config: ClassVar[type[ElevenLabsTTSConfig]] = ElevenLabsTTSConfig
    config: ElevenLabsTTSConfig

    def stream_url(self, voice_id: str) -> str:
        cfg = self.config
        params: dict[str, str] = {"model_id": cfg.model, "output_format": _FORMATS[cfg.output]}
        if cfg.language_code:
            params["language_code"] = cfg.language_code
        if cfg.auto_mode:
            params["auto_mode"] = "true"
        if cfg.enable_ssml_parsing:
            params["enable_ssml_parsing"] = "true"
        if cfg.apply_text_normalization:
            params["apply_text_normalization"] = cfg.apply_text_normalization
        return (f"{cfg.base_url.rstrip('/')}/v1/text-to-speech/{quote(voice_id, safe='')}"
                f"/stream-input?{urlencode(params)}")

    def init_message(self) -> dict[str, Any]:
        cfg = self.config
        msg: dict[str, Any] = {"text": " "}
        extra = {k: v for k, v in (("style", cfg.style), ("use_speaker_boost",
                                                           cfg.use_speaker_boost),
                                   ("speed", cfg.speed)) if v is not None}
        if cfg.stability is not None or cfg.similarity_boost is not None or extra:
            # The realtime schema requires both of these whenever voice_settings is sent.
            msg["voice_settings"] = {
                "stability": 0.5 if cfg.stability is None else cfg.stability,
                "similarity_boost": 0.75 if cfg.similarity_boost is None
                else cfg.similarity_boost,
                **extra,
            }
        if cfg.chunk_length_schedule:
            msg["generation_config"] = {"chunk_length_schedule": cfg.chunk_length_schedule}
        return msg

    async def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[AudioChunk]:
        from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

        if not text.strip():
            return
        cfg = self.config
        key = await resolve_api_key(self.ctx, cfg.api_key, self.name)
        assert key is not None
        clock = FirstResultClock(self.ctx, self.name)
        ws = await ws_connect(self.stream_url(voice or cfg.voice_id), provider=self.name,
                              headers={"xi-api-key": key}, policy=cfg.retry_policy(),
                              open_timeout=cfg.connect_timeout_s)
        decoder = ChunkDecoder(self._spec)
        got_audio = False
        try:
            await ws.send(json.dumps(self.init_message()))
            # The API wants input text to end with a space; flush forces generation now.
            await ws.send(json.dumps({"text": text.strip() + " ", "flush": True}))
            await ws.send(json.dumps({"text": ""}))
            report_usage(self.ctx, self.name, cfg.model, "characters", float(len(text)))
            while True:
                try:
                    async with asyncio.timeout(cfg.read_timeout_s):
                        raw = await ws.recv()
                except TimeoutError:
                    raise ProviderError(self.name, "no audio within the read timeout",
                                        code="timeout") from None
                except ConnectionClosedOK:
                    if got_audio:
                        return  # closed normally after the audio without an isFinal
                    raise
                msg = json.loads(raw)
                audio = msg.get("audio")
                if audio:
                    try:
                        chunk = decoder.feed(base64.b64decode(audio))
                    except (binascii.Error, ValueError):
                        raise ProviderError(self.name, "undecodable audio chunk",
                                            code="bad_response") from None
                    if chunk is not None:
                        got_audio = True
                        clock.mark()
                        yield chunk
                if msg.get("isFinal"):
                    return
                if not audio and (msg.get("error") or msg.get("message")):
                    err_msg, code = vendor_message(msg)
                    raise ProviderError(self.name, redact(err_msg or "error"), code=code)
        except ConnectionClosed as exc:
            raise ws_closed_error(self.name, exc) from None
        except ValueError:
            raise ProviderError(self.name, "unparseable message", code="bad_response") from None
        finally:
            await ws_close_quietly(ws)
