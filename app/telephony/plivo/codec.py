"""The stream's audio codec: `audio/x-mulaw` 8 kHz or `audio/x-l16` 8/16 kHz.

Read from the `start` event's `mediaFormat`, never assumed from the XML we served. L16 on the
Plivo wire is little-endian (every Plivo-authored implementation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.audio import g711
from pipelines.audio.frames import samples_per_frame
from pipelines.audio.inbox import AudioFormat, CallerFrame
from pipelines.audio.wav import pcm16_from_bytes, pcm16_to_bytes

MULAW = "audio/x-mulaw"
L16 = "audio/x-l16"
SUPPORTED: dict[str, tuple[int, ...]] = {MULAW: (8000,), L16: (8000, 16000)}


class UnsupportedCodec(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class StreamCodec:
    encoding: str
    sample_rate: int

    def __post_init__(self) -> None:
        rates = SUPPORTED.get(self.encoding)
        if rates is None:
            raise UnsupportedCodec(f"unsupported stream encoding {self.encoding!r}")
        if self.sample_rate not in rates:
            raise UnsupportedCodec(
                f"unsupported sample rate {self.sample_rate} for {self.encoding}")

    @classmethod
    def parse(cls, content_type: str) -> StreamCodec:
        """From `audio/x-mulaw;rate=8000` (XML form)."""
        encoding, _, rest = content_type.partition(";")
        rate = 8000
        for part in rest.split(";"):
            k, _, v = part.strip().partition("=")
            if k == "rate":
                if not v.isdigit():
                    raise UnsupportedCodec(f"bad rate in content type {content_type!r}")
                rate = int(v)
        return cls(encoding.strip().lower(), rate)

    @property
    def content_type(self) -> str:
        return f"{self.encoding};rate={self.sample_rate}"

    @property
    def audio_format(self) -> AudioFormat:
        return AudioFormat(self.sample_rate, "mulaw" if self.encoding == MULAW else "pcm16")

    @property
    def bytes_per_sample(self) -> int:
        return 1 if self.encoding == MULAW else 2

    @property
    def frame_samples(self) -> int:
        """Samples per 20 ms at this rate."""
        return samples_per_frame(self.sample_rate)

    @property
    def frame_bytes(self) -> int:
        return self.frame_samples * self.bytes_per_sample

    @property
    def silence_byte(self) -> int:
        return g711.ULAW_SILENCE if self.encoding == MULAW else 0

    def decode(self, payload: bytes) -> np.ndarray:
        if self.encoding == MULAW:
            return g711.ulaw_decode(payload)
        return pcm16_from_bytes(payload)

    def encode(self, samples: np.ndarray) -> bytes:
        if self.encoding == MULAW:
            return g711.ulaw_encode(samples)
        return pcm16_to_bytes(samples)


DEFAULT_CODEC = StreamCodec(MULAW, 8000)


class FrameDecoder:
    """Cuts a stream's media payloads (any length) into 20 ms frames at the codec's own rate
    and decodes each to PCM, keeping the μ-law bytes alongside: nothing is resampled here."""

    __slots__ = ("_carry", "codec")

    def __init__(self, codec: StreamCodec) -> None:
        self.codec = codec
        self._carry = b""

    def push(self, payload: bytes) -> list[CallerFrame]:
        data = self._carry + payload if self._carry else payload
        size = self.codec.frame_bytes
        whole = len(data) - len(data) % size
        self._carry = data[whole:]
        mulaw = self.codec.encoding == MULAW
        out: list[CallerFrame] = []
        for off in range(0, whole, size):
            chunk = data[off:off + size]
            out.append(CallerFrame(self.codec.decode(chunk), self.codec.sample_rate,
                                   chunk if mulaw else None))
        return out

    @property
    def audio_format(self) -> AudioFormat:
        return self.codec.audio_format
