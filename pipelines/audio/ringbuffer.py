"""Fixed-capacity int16 ring buffer (e.g. "the last ≤8 s of user audio" for end-of-turn).

Per-call memory must not grow with call length, so history is a preallocated circle.
"""

from __future__ import annotations

import numpy as np

from pipelines.audio.frames import as_int16


class RingBuffer:
    __slots__ = ("_buf", "_pos", "_size", "total_written")

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self._buf = np.zeros(capacity, dtype=np.int16)
        self._pos = 0  # next write index
        self._size = 0
        self.total_written = 0  # samples ever appended (a timeline position)

    @property
    def capacity(self) -> int:
        return len(self._buf)

    def __len__(self) -> int:
        return self._size

    def append(self, samples: np.ndarray) -> None:
        x = as_int16(samples)
        cap = len(self._buf)
        self.total_written += len(x)
        if len(x) >= cap:
            self._buf[:] = x[-cap:]
            self._pos = 0
            self._size = cap
            return
        end = self._pos + len(x)
        if end <= cap:
            self._buf[self._pos : end] = x
        else:
            first = cap - self._pos
            self._buf[self._pos :] = x[:first]
            self._buf[: end - cap] = x[first:]
        self._pos = end % cap
        self._size = min(cap, self._size + len(x))

    def last(self, n: int) -> np.ndarray:
        """A copy of the most recent min(n, len) samples, oldest first."""
        n = max(0, min(n, self._size))
        if n == 0:
            return np.zeros(0, dtype=np.int16)
        start = self._pos - n
        if start >= 0:
            return self._buf[start : self._pos].copy()
        return np.concatenate([self._buf[start:], self._buf[: self._pos]])

    def clear(self) -> None:
        self._pos = 0
        self._size = 0
