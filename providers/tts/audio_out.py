"""Turning a TTS vendor's raw audio bytes into `AudioChunk`s.

Output formats are named `pcm_<rate>` (16-bit little-endian PCM) or `mulaw_8000` (G.711 μ-law,
passed through untouched so a μ-law phone leg needs no resampling or transcoding). Network reads
split PCM at arbitrary byte offsets, so an odd trailing byte is carried to the next read instead
of corrupting every following sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from providers.base import AudioChunk


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
