"""STT `openai`: batch transcription of each user turn via `/audio/transcriptions`.

Frames pushed between turns are kept (bounded to `max_buffer_s`, oldest dropped); `flush()`
hands the turn's audio to a worker that uploads it as a WAV in a multipart form (`file`, `model`,
optional `language` / `prompt`) and emits one final `Transcript` — no interim results. `flush()`
itself returns at once so the engine is never blocked on the upload. `base_url` lets the same
adapter use faster-whisper / speaches servers that implement the OpenAI endpoint (no key needed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import httpx
import numpy as np
from pydantic import Field, model_validator

from providers.base import (
    ProviderError,
    STTProvider,
    STTStream,
    Transcript,
    TranscriptQueue,
    queued_transcripts,
)
from providers.http import CloudConfig, open_stream, redact, resolve_api_key, shared_client
from providers.llm.openai import OPENAI_BASE_URL
from providers.usage import TTFB_METRIC, report_metric, report_usage

log = logging.getLogger(__name__)


class OpenAISTTConfig(CloudConfig):
    model: str = "gpt-4o-mini-transcribe"
    base_url: str = Field(OPENAI_BASE_URL, pattern=r"^https?://")
    # ISO-639-1 code ("en"); None derives it from the agent's language ("en-US" → "en").
    language: str | None = None
    prompt: str | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    max_buffer_s: float = Field(60.0, ge=1, le=600)
    # Turns shorter than this are not uploaded (a final "" is emitted instead).
    min_audio_ms: int = Field(100, ge=0, le=5000)
    headers: dict[str, str] = Field(default_factory=dict)
    read_timeout_s: float = Field(15.0, gt=0, le=300)

    @model_validator(mode="after")
    def _key_needed(self) -> OpenAISTTConfig:
        if self.api_key is None and self.base_url == OPENAI_BASE_URL:
            raise ValueError("api_key is required for OpenAI")
        return self


class OpenAISTT(STTProvider):
    name: ClassVar[str] = "openai"
    Config: ClassVar[type[OpenAISTTConfig]] = OpenAISTTConfig
    config: OpenAISTTConfig

    async def open(self, sample_rate: int, language: str) -> STTStream:
        key = await resolve_api_key(self.ctx, self.config.api_key, self.name, required=False)
        lang = self.config.language or (language.split("-")[0].lower() if language else None)
        return _BatchStream(self, sample_rate, lang, key)

    async def transcribe(self, samples: np.ndarray, sample_rate: int, language: str | None,
                         key: str | None) -> str:
        """Upload one WAV and return the recognised text."""
        from pipelines.audio.wav import wav_bytes

        cfg = self.config
        fields: dict[str, Any] = {"model": cfg.model, "response_format": "json"}
        if language:
            fields["language"] = language
        if cfg.prompt:
            fields["prompt"] = cfg.prompt
        if cfg.temperature is not None:
            fields["temperature"] = str(cfg.temperature)
        audio = wav_bytes(samples, sample_rate)
        headers = dict(cfg.headers)
        if key:
            headers["authorization"] = f"Bearer {key}"
        url = f"{cfg.base_url.rstrip('/')}/audio/transcriptions"
        client = shared_client(self.ctx)
        timeout = cfg.httpx_timeout()

        def build() -> httpx.Request:
            return client.build_request(
                "POST", url, data=fields, files={"file": ("turn.wav", audio, "audio/wav")},
                headers=headers, timeout=timeout)

        async with open_stream(client, self.name, build, cfg.retry_policy()) as response:
            raw = await response.aread()
        try:
            payload = response.json() if raw else {}
        except ValueError:
            raise ProviderError(self.name, redact(f"unexpected response: {raw[:200]!r}"),
                                code="bad_response") from None
        return str(payload.get("text") or "").strip()


class _BatchStream(STTStream):
    def __init__(self, provider: OpenAISTT, sample_rate: int, language: str | None,
                 key: str | None) -> None:
        self._p = provider
        self._rate = sample_rate
        self._language = language
        self._key = key
        self._frames: deque[np.ndarray] = deque()
        self._samples = 0
        self._max_samples = int(provider.config.max_buffer_s * sample_rate)
        self._pushed_s = 0.0
        # Each job is (audio, start_ms, end_ms, flush time); None stops the worker.
        self._jobs: asyncio.Queue[tuple[np.ndarray, int, int, float] | None] = asyncio.Queue()
        self._out: TranscriptQueue = asyncio.Queue()
        self._worker = asyncio.create_task(self._work(), name="openai-stt")
        self._closed = False

    async def push(self, frame: np.ndarray) -> None:
        if self._closed:
            return
        f = np.asarray(frame, dtype=np.int16)
        self._frames.append(f)
        self._samples += f.size
        self._pushed_s += f.size / self._rate
        while self._samples > self._max_samples and len(self._frames) > 1:
            self._samples -= self._frames.popleft().size  # keep the most recent audio

    async def flush(self) -> None:
        if self._closed:
            return
        audio = (np.concatenate(list(self._frames)) if self._frames
                 else np.zeros(0, dtype=np.int16))
        self._frames.clear()
        self._samples = 0
        end_ms = round(self._pushed_s * 1000)
        start_ms = end_ms - round(audio.size * 1000 / self._rate)
        loop = asyncio.get_running_loop()
        self._jobs.put_nowait((audio, start_ms, end_ms, loop.time()))

    async def _work(self) -> None:
        cfg = self._p.config
        while True:
            job = await self._jobs.get()
            if job is None:
                return
            audio, start_ms, end_ms, flushed_at = job
            if audio.size * 1000 < cfg.min_audio_ms * self._rate:
                self._out.put_nowait(Transcript("", True, 1.0, start_ms, end_ms))
                continue
            try:
                text = await self._p.transcribe(audio, self._rate, self._language, self._key)
            except ProviderError as exc:
                self._out.put_nowait(exc)
                continue
            except Exception as exc:  # never let the worker die silently mid-call
                log.exception("openai stt: transcription failed")
                self._out.put_nowait(ProviderError(self._p.name, type(exc).__name__))
                continue
            # Latency from the end of the turn (flush) to its transcript.
            loop = asyncio.get_running_loop()
            report_metric(self._p.ctx, self._p.name, TTFB_METRIC,
                          (loop.time() - flushed_at) * 1000.0)
            report_usage(self._p.ctx, self._p.name, cfg.model, "audio_seconds",
                         audio.size / self._rate)
            self._out.put_nowait(Transcript(text, True, 1.0, start_ms, end_ms))

    def events(self) -> AsyncIterator[Transcript]:
        return queued_transcripts(self._out)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._worker.cancel()
        with contextlib.suppress(BaseException):
            await self._worker
        self._out.put_nowait(None)
