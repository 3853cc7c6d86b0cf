"""A call recording: the caller and what the caller heard, on one clock, streamed to a WAV file.

Two tracks at the carrier's rate, aligned on the stream's clock (seconds since the stream
started, on the playout's clock):

- the caller's track is placed by stream position: frames in arrival order, each 20 ms after
  the one before (the carrier sends them at real-time pace; the first frame is at 0);
- the agent's track is placed by play position: each frame the playout sends is written where
  its pacing clock says it starts playing at the carrier (`agent(pcm, at)`). A `clearAudio`
  makes the carrier drop what it had not played: `cut(at)` removes everything from `at` on,
  so audio that was sent but never heard is not in the recording.

Nothing is kept for long: the part of the timeline that can no longer change (before both the
caller's position and the clock's "now": a cut only ever removes audio from now on) is written
out as it goes, so memory holds about a second of audio whatever the call's length. Stereo puts
the caller on the left and the agent on the right; mono mixes them. 16-bit PCM WAV, written with
the standard library's `wave` (its header is completed on `finish`).

A write that fails (disk full, directory gone) stops the recording, keeps the error in `error`,
and never raises into the call.
"""

from __future__ import annotations

import logging
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

Clock = Callable[[], float]
COMMIT_EVERY_S = 1.0  # write out once this much of the timeline is settled
# When the caller's audio stops coming (a leg that sends nothing in silence), the timeline is
# still written out once it is this far behind the clock; caller audio arriving later follows.
MAX_CALLER_LAG_S = 3.0


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    path: str
    sample_rate: int
    channels: int
    frames: int  # samples per channel

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


class CallRecorder:
    def __init__(self, path: str, *, sample_rate: int, channels: int, t0: float,
                 clock: Clock = time.monotonic) -> None:
        if channels not in (1, 2):
            raise ValueError("channels must be 1 or 2")
        self.path = path
        self.sample_rate = sample_rate
        self.channels = channels
        self.t0 = t0
        self._clock = clock
        self._wav: wave.Wave_write | None = wave.open(path, "wb")
        self._wav.setnchannels(channels)
        self._wav.setsampwidth(2)
        self._wav.setframerate(sample_rate)
        self._base = 0  # samples per channel already written
        self._caller = np.zeros(0, np.int16)  # caller samples from _base on
        self._agent = np.zeros(0, np.int16)  # agent samples from _base on
        self._commit_every = int(sample_rate * COMMIT_EVERY_S)
        self.finished = False
        self.error: Exception | None = None
        self.agent_samples_cut = 0  # sent but cleared before being heard

    # --- taps -----------------------------------------------------------------------------
    def caller(self, pcm: np.ndarray) -> None:
        """The caller's next frame (int16 at the carrier's rate), in stream order."""
        if self._stopped:
            return
        self._caller = np.concatenate([self._caller, pcm.astype(np.int16, copy=False)])
        self._maybe_commit()

    def agent(self, pcm: np.ndarray, at: float) -> None:
        """A frame of agent audio that starts playing at clock time `at`."""
        if self._stopped or not len(pcm):
            return
        idx = self._index(at) - self._base
        pcm = pcm.astype(np.int16, copy=False)
        if idx < 0:  # already written out (should not happen: frames play after now)
            pcm = pcm[-idx:]
            idx = 0
        end = idx + len(pcm)
        if end > len(self._agent):
            grown = np.zeros(end, np.int16)
            grown[:len(self._agent)] = self._agent
            self._agent = grown
        self._agent[idx:end] = pcm
        self._maybe_commit()

    def cut(self, at: float) -> None:
        """The carrier dropped what it had not played at `at`: it was never heard."""
        if self._stopped:
            return
        idx = max(0, self._index(at) - self._base)
        if idx < len(self._agent):
            self.agent_samples_cut += len(self._agent) - idx
            self._agent = self._agent[:idx].copy()

    def finish(self, at: float | None = None) -> RecordingInfo:
        """The call is over at `at` (default now): agent audio after it was not heard. Writes
        out the rest and completes the file. Raises the error that stopped the recording."""
        if not self.finished:
            self.cut(self._clock() if at is None else at)
            if self.error is None:
                end = max(len(self._caller), len(self._agent))
                self._commit(end)
            self.finished = True
            self._close()
        if self.error is not None:
            raise self.error
        return RecordingInfo(self.path, self.sample_rate, self.channels, self._base)

    def abort(self) -> None:
        """Stop without completing (the file is left to the caller to remove)."""
        self.finished = True
        self._close()

    # --- internals --------------------------------------------------------------------------
    @property
    def _stopped(self) -> bool:
        return self.finished or self.error is not None

    def _index(self, at: float) -> int:
        return round((at - self.t0) * self.sample_rate)

    def _maybe_commit(self) -> None:
        now = self._index(self._clock())
        settled = min(self._base + len(self._caller), now)
        if now - (self._base + len(self._caller)) > MAX_CALLER_LAG_S * self.sample_rate:
            settled = now - self._commit_every  # the caller went quiet on the wire
        if settled - self._base >= self._commit_every:
            self._commit(settled - self._base)

    def _commit(self, n: int) -> None:
        if n <= 0:
            return
        caller = _take(self._caller, n)
        agent = _take(self._agent, n)
        self._caller = self._caller[n:] if len(self._caller) > n else np.zeros(0, np.int16)
        self._agent = self._agent[n:] if len(self._agent) > n else np.zeros(0, np.int16)
        self._base += n
        if self.channels == 2:
            data = np.column_stack([caller, agent]).astype("<i2").tobytes()
        else:
            mixed = np.clip(caller.astype(np.int32) + agent.astype(np.int32), -32768, 32767)
            data = mixed.astype("<i2").tobytes()
        try:
            assert self._wav is not None
            self._wav.writeframesraw(data)
        except Exception as exc:
            log.warning("recording %s: write failed, recording stopped: %s", self.path, exc)
            self.error = exc
            self._close()

    def _close(self) -> None:
        wav, self._wav = self._wav, None
        if wav is not None:
            try:
                wav.close()  # completes the header's sizes
            except Exception as exc:
                if self.error is None:
                    self.error = exc


def _take(buf: np.ndarray, n: int) -> np.ndarray:
    """The first `n` samples of `buf`, padded with silence."""
    if len(buf) >= n:
        return buf[:n]
    out = np.zeros(n, np.int16)
    out[:len(buf)] = buf
    return out
