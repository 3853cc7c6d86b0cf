"""Start/stop hysteresis shared by every VAD engine.

An engine classifies fixed windows (Silero: 512 samples, webrtcvad: 320) as speech or not; the
segmenter turns that into speech start/stop events: `start_ms` of uninterrupted speech windows
open a segment, `stop_ms` of uninterrupted non-speech close it. Events carry the time of the true
edge (first speech window / first silent window), not the time the hysteresis was satisfied, so
the conversation can measure latency from what the caller actually did.

Halfway to a stop, a "pause" event says the caller has gone quiet (once per silent run, with the
same edge time the stop will carry if the silence lasts). It opens nothing and closes nothing;
the engine uses it to ask a streaming STT for its final early, so that the words are in by the
time the stop's end-of-turn decision wants them.

Time is counted in samples, so window boundaries and thresholds compare exactly.
"""

from __future__ import annotations

from pipelines.vad.base import VadEvent


class SpeechSegmenter:
    def __init__(self, start_ms: float, stop_ms: float, sample_rate: int = 16000) -> None:
        if start_ms <= 0 or stop_ms <= 0:
            raise ValueError("start_ms and stop_ms must be positive")
        self.sample_rate = sample_rate
        self._start_samples = start_ms * sample_rate / 1000.0
        self._stop_samples = stop_ms * sample_rate / 1000.0
        self.reset()

    def retune(self, start_ms: float, stop_ms: float) -> None:
        """New edge lengths from the next window on (a segment in progress stays open)."""
        if start_ms <= 0 or stop_ms <= 0:
            raise ValueError("start_ms and stop_ms must be positive")
        self._start_samples = start_ms * self.sample_rate / 1000.0
        self._stop_samples = stop_ms * self.sample_rate / 1000.0

    def reset(self) -> None:
        self.speaking = False
        self._run_start: int | None = None  # first sample of the current candidate edge run
        self._speech_start = 0  # first sample of the current (open) segment
        self._paused = False  # this silent run has had its "pause" event

    def _ms(self, samples: int) -> float:
        return samples * 1000.0 / self.sample_rate

    def update(self, is_speech: bool, window_start: int, window_len: int) -> VadEvent | None:
        """Feed one classified window ([window_start, window_start+window_len) in samples)."""
        window_end = window_start + window_len
        if not self.speaking:
            if not is_speech:
                self._run_start = None
                return None
            if self._run_start is None:
                self._run_start = window_start
            if window_end - self._run_start >= self._start_samples:
                self.speaking = True
                self._speech_start = self._run_start
                self._run_start = None
                return VadEvent("start", self._ms(self._speech_start))
            return None
        if is_speech:
            self._run_start = None
            return None
        if self._run_start is None:
            self._run_start = window_start
            self._paused = False
        silent = window_end - self._run_start
        if silent >= self._stop_samples:
            self.speaking = False
            stop = self._run_start
            self._run_start = None
            return VadEvent("stop", self._ms(stop), speech_ms=self._ms(stop - self._speech_start))
        if not self._paused and silent * 2 >= self._stop_samples:
            self._paused = True
            return VadEvent("pause", self._ms(self._run_start),
                            speech_ms=self._ms(self._run_start - self._speech_start))
        return None
