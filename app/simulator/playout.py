"""The simulator's model of Plivo's playback buffer (what the caller hears, and when).

Audio from `playAudio` is appended to a buffer that drains in real time on a clock. Everything
is rendered into a recording on the same clock, silence included, so the recording is exactly
what a caller would have heard. Checkpoints are markers in the buffer: `advance()` reports the
names whose audio has fully played, which the simulator acks with `playedStream`. `clear()`
drops unplayed audio (and the checkpoints inside it), as `clearAudio` does.

It also measures what the playout writer is judged on: how much audio was queued ahead at
each arrival.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class QueueSample:
    at: float  # clock time of the arrival
    queued_ms: float  # unplayed audio at Plivo right after the frame arrived


class FarEndPlayout:
    def __init__(self, sample_rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = sample_rate
        self._clock = clock
        self.t0 = clock()
        self._buf: deque[np.ndarray] = deque()
        self._buffered = 0  # samples waiting
        self._enqueued = 0  # samples ever accepted (position of the buffer's end)
        self._played = 0  # samples ever played from the buffer
        self._markers: deque[tuple[int, str]] = deque()
        self._rendered = 0  # samples of recording rendered so far (the timeline)
        self._recording: list[np.ndarray] = []
        self.queue_samples: list[QueueSample] = []
        self.max_queued_ms = 0.0
        self.dropped_ms_total = 0.0
        self.frames_received = 0

    @property
    def queued_ms(self) -> float:
        return 1000.0 * self._buffered / self.rate

    @property
    def played_ms(self) -> float:
        return 1000.0 * self._played / self.rate

    def advance(self, now: float | None = None) -> list[str]:
        """Play the buffer up to `now`; returns checkpoint names that are now fully played."""
        now = self._clock() if now is None else now
        target = int((now - self.t0) * self.rate)
        need = target - self._rendered
        done: list[str] = []
        if need <= 0:
            return done
        out = np.zeros(need, dtype=np.int16)
        filled = 0
        while filled < need and self._buf:
            head = self._buf[0]
            take = min(need - filled, len(head))
            out[filled : filled + take] = head[:take]
            filled += take
            if take == len(head):
                self._buf.popleft()
            else:
                self._buf[0] = head[take:]
        self._buffered -= filled
        self._played += filled
        self._rendered = target
        self._recording.append(out)
        while self._markers and self._markers[0][0] <= self._played:
            done.append(self._markers.popleft()[1])
        return done

    def enqueue(self, samples: np.ndarray, now: float | None = None) -> list[str]:
        now = self._clock() if now is None else now
        done = self.advance(now)
        if len(samples):
            self._buf.append(np.asarray(samples, dtype=np.int16))
            self._buffered += len(samples)
            self._enqueued += len(samples)
        self.frames_received += 1
        q = self.queued_ms
        self.queue_samples.append(QueueSample(now, q))
        self.max_queued_ms = max(self.max_queued_ms, q)
        return done

    def checkpoint(self, name: str, now: float | None = None) -> list[str]:
        """Mark the current end of the buffer; acked once everything before it has played."""
        done = self.advance(now)
        self._markers.append((self._enqueued, name))
        if self._enqueued <= self._played:
            done.append(self._markers.pop()[1])
        return done

    def clear(self, now: float | None = None) -> tuple[float, list[str], list[str]]:
        """Drop unplayed audio. Returns (ms dropped, checkpoints that finished playing just
        before the clear, checkpoints discarded with the audio)."""
        done = self.advance(now)
        dropped = self.queued_ms
        self._buf.clear()
        self._buffered = 0
        self._enqueued = self._played
        discarded = [name for _, name in self._markers]
        self._markers.clear()
        self.dropped_ms_total += dropped
        return dropped, done, discarded

    def recording(self) -> np.ndarray:
        if not self._recording:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._recording)
