"""Turning a TTS vendor's raw audio bytes into `AudioChunk`s.

Output formats are named `pcm_<rate>` (16-bit little-endian PCM) or `mulaw_8000` (G.711 μ-law,
passed through untouched so a μ-law phone leg needs no resampling or transcoding). Network reads
split PCM at arbitrary byte offsets, so an odd trailing byte is carried to the next read instead
of corrupting every following sample.

Also what the cloud adapters share around that: `FormattedTTS` (an adapter whose `output` option
names its format) and `stream_speech` (a vendor that streams the audio as an HTTP response body).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import numpy as np

from providers.base import AudioChunk, ProviderContext, TTSProvider
from providers.http import CloudConfig, open_stream, shared_client
from providers.usage import FirstResultClock, report_usage


@dataclass(frozen=True, slots=True)
class OutputSpec:
    encoding: Literal["pcm16", "mulaw"]
    sample_rate: int

    @classmethod
    def parse(cls, name: str) -> OutputSpec:
        kind, _, rate = name.partition("_")
        if kind not in ("pcm", "mulaw") or not rate.isdigit():
            raise ValueError(f"unknown output format {name!r}")
        return cls("mulaw" if kind == "mulaw" else "pcm16", int(rate))


class ChunkDecoder:
    __slots__ = ("_carry", "spec")

    def __init__(self, spec: OutputSpec) -> None:
        self.spec = spec
        self._carry = b""

    def feed(self, data: bytes) -> AudioChunk | None:
        if self.spec.encoding == "mulaw":
            if not data:
                return None
            return AudioChunk(np.frombuffer(data, dtype=np.uint8).copy(), self.spec.sample_rate,
                              "mulaw")
        if self._carry:
            data = self._carry + data
            self._carry = b""
        if len(data) % 2:
            data, self._carry = data[:-1], data[-1:]
        if not data:
            return None
        samples = np.frombuffer(data, dtype="<i2").astype(np.int16)
        return AudioChunk(samples, self.spec.sample_rate, "pcm16")


class FormattedTTS(TTSProvider):
    """A TTS adapter whose config option `output` names its output format (see `OutputSpec`)."""

    def __init__(self, config: Any, ctx: ProviderContext) -> None:
        super().__init__(config, ctx)
        self._spec = OutputSpec.parse(config.output)
        self.sample_rate = self._spec.sample_rate

    def prefers_mulaw(self) -> bool:
        return self._spec.encoding == "mulaw"


async def stream_speech(ctx: ProviderContext, provider: str, cfg: CloudConfig, url: str,
                        body: bytes, headers: dict[str, str], spec: OutputSpec, model: str,
                        characters: int) -> AsyncGenerator[AudioChunk, None]:
    """POST `body` to `url` and yield the streamed response body as audio chunks (retried before
    the first byte per `cfg`; reports time to first audio). Closing the iterator closes the
    response, which drops the connection and stops the vendor generating."""
    client = shared_client(ctx)
    timeout = cfg.httpx_timeout()

    def build() -> httpx.Request:
        return client.build_request("POST", url, content=body, headers=headers, timeout=timeout)

    clock = FirstResultClock(ctx, provider)
    decoder = ChunkDecoder(spec)
    async with open_stream(client, provider, build, cfg.retry_policy()) as response:
        # The vendor bills the characters of an accepted request, even if we stop listening.
        report_usage(ctx, provider, model, "characters", float(characters))
        async for data in response.aiter_bytes():
            chunk = decoder.feed(data)
            if chunk is not None:
                clock.mark()
                yield chunk
