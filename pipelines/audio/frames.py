"""Internal audio framing: mono int16 at 16 kHz in 20 ms frames (320 samples).

Transports deliver audio in whatever chunk sizes they like (Plivo: ~20 ms, TTS: sentence-sized
blobs). Everything downstream (VAD windows, STT pushes, playout pacing) assumes exact frames, so
the `Framer` re-chunks arbitrary lengths and carries the remainder over to the next push.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 320
_INT16 = np.dtype(np.int16)


def samples_per_frame(sample_rate: int, frame_ms: int = FRAME_MS) -> int:
    """Samples in one frame of `frame_ms` at `sample_rate` (e.g. 160 at 8 kHz / 20 ms)."""
    n = sample_rate * frame_ms
    if n % 1000:
        raise ValueError(f"{frame_ms} ms is not a whole number of samples at {sample_rate} Hz")
    return n // 1000


def as_int16(samples: np.ndarray) -> np.ndarray:
    """View/convert to a 1-D int16 array; floats are taken as [-1, 1] and clipped."""
    # Nearly every call already has one (each 20 ms of caller and agent audio passes here
    # several times): answer that without numpy's conversions.
    if type(samples) is np.ndarray and samples.ndim == 1 and samples.dtype == _INT16:
        return samples
    a = np.asarray(samples)
    if a.dtype == np.int16:
        return a.reshape(-1)
    if np.issubdtype(a.dtype, np.floating):
        return np.clip(np.rint(a.reshape(-1) * 32767.0), -32768, 32767).astype(np.int16)
    if np.issubdtype(a.dtype, np.integer):
        return np.clip(a.reshape(-1), -32768, 32767).astype(np.int16)
    raise TypeError(f"unsupported sample dtype {a.dtype}")


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """One frame of mono int16 audio with its rate (16 kHz / 320 samples internally)."""

    samples: np.ndarray
    sample_rate: int = SAMPLE_RATE

    @property
    def duration_ms(self) -> float:
        return 1000.0 * len(self.samples) / self.sample_rate


class Framer:
    """Re-chunks arbitrary-length int16 audio into exact frames, carrying the remainder.

    `push` returns complete frames (each a fresh array, safe to keep); `flush` returns the
    remainder zero-padded to a full frame (or None when nothing is pending).
    """

    __slots__ = ("_buf", "_fill", "frame_samples")

    def __init__(self, frame_samples: int = FRAME_SAMPLES) -> None:
        if frame_samples <= 0:
            raise ValueError("frame_samples must be positive")
        self.frame_samples = frame_samples
        self._buf = np.zeros(frame_samples, dtype=np.int16)
        self._fill = 0

    @property
    def pending(self) -> int:
        """Samples held back waiting for a full frame."""
        return self._fill

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        x = as_int16(samples)
        n = self.frame_samples
        out: list[np.ndarray] = []
        pos = 0
        if self._fill:
            take = min(n - self._fill, len(x))
            self._buf[self._fill : self._fill + take] = x[:take]
            self._fill += take
            pos = take
            if self._fill < n:
                return out
            out.append(self._buf.copy())
            self._fill = 0
        whole = (len(x) - pos) // n
        if whole:
            block = x[pos : pos + whole * n].reshape(whole, n)
            out.extend(row.copy() for row in block)
            pos += whole * n
        rest = len(x) - pos
        if rest:
            self._buf[:rest] = x[pos:]
            self._fill = rest
        return out

    def flush(self) -> np.ndarray | None:
        if not self._fill:
            return None
        frame = np.zeros(self.frame_samples, dtype=np.int16)
        frame[: self._fill] = self._buf[: self._fill]
        self._fill = 0
        return frame

    def reset(self) -> None:
        self._fill = 0
