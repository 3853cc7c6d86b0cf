"""Mixing background / "thinking" audio under (or instead of) agent speech.

A `LoopingSource` hands out consecutive blocks of a clip at a fixed volume, looping or not; `mix`
adds two int16 signals with saturation so loud overlaps clip instead of wrapping around.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.audio.frames import as_int16
from pipelines.audio.resample import resample


def mix(a: np.ndarray, b: np.ndarray, gain_b: float = 1.0) -> np.ndarray:
    """a + gain_b·b, saturated to int16. The shorter input is treated as zero-padded."""
    x, y = as_int16(a), as_int16(b)
    n = max(len(x), len(y))
    acc = np.zeros(n, dtype=np.float32)
    acc[: len(x)] += x
    acc[: len(y)] += y.astype(np.float32) * gain_b
    return np.clip(np.rint(acc), -32768, 32767).astype(np.int16)


def apply_gain(samples: np.ndarray, gain: float) -> np.ndarray:
    x = as_int16(samples).astype(np.float32) * gain
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


class LoopingSource:
    """Reads a clip block by block at `volume` (0..1), looping when `loop` is set."""

    def __init__(self, clip: np.ndarray, volume: float = 0.3, loop: bool = True) -> None:
        if not 0.0 <= volume <= 1.0:
            raise ValueError("volume must be between 0 and 1")
        self.clip = as_int16(clip).copy()
        self.volume = volume
        self.loop = loop
        self._pos = 0

    @property
    def exhausted(self) -> bool:
        return not self.loop and self._pos >= len(self.clip)

    def read(self, n: int) -> np.ndarray:
        """The next n samples (zeros once a non-looping clip has run out)."""
        out = np.zeros(n, dtype=np.int16)
        if not len(self.clip):
            return out
        filled = 0
        while filled < n:
            if self._pos >= len(self.clip):
                if not self.loop:
                    break
                self._pos = 0
            take = min(n - filled, len(self.clip) - self._pos)
            out[filled : filled + take] = self.clip[self._pos : self._pos + take]
            filled += take
            self._pos += take
        return apply_gain(out, self.volume) if self.volume != 1.0 else out

    def mix_into(self, frame: np.ndarray) -> np.ndarray:
        """`frame` with the next block of this source mixed under it."""
        return mix(frame, self.read(len(frame)))

    def rewind(self) -> None:
        self._pos = 0


@dataclass(frozen=True, eq=False)
class Background:
    """A sound laid under everything a call plays (hold music, room noise): mono int16 at
    `sample_rate`, at `volume` (0..1), looped or played once."""

    clip: np.ndarray
    sample_rate: int
    volume: float = 0.5
    loop: bool = True

    def __post_init__(self) -> None:
        if not len(self.clip) or self.sample_rate <= 0:
            raise ValueError("background audio must be non-empty with a positive sample rate")
        if not 0.0 <= self.volume <= 1.0:
            raise ValueError("volume must be between 0 and 1")

    def source(self, sample_rate: int) -> LoopingSource:
        """A reader of this sound at the sink's own rate (resampled once, up front)."""
        clip = as_int16(self.clip)
        if sample_rate != self.sample_rate:
            clip = resample(clip, self.sample_rate, sample_rate)
        return LoopingSource(clip, volume=self.volume, loop=self.loop)
