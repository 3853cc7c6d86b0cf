"""Start/stop hysteresis shared by every VAD engine.

An engine classifies fixed windows (Silero: 512 samples, webrtcvad: 320) as speech or not; the
segmenter turns that into speech start/stop events: `start_ms` of uninterrupted speech windows
open a segment, `stop_ms` of uninterrupted non-speech close it. Events carry the time of the true
edge (first speech window / first silent window), not the time the hysteresis was satisfied, so
the conversation can measure latency from what the caller actually did.

Two events say the caller has gone quiet without closing anything, each once per silent run and
with the same edge time the stop will carry if the silence lasts:
- "quiet", after `QUIET_MS`: the engine asks a streaming STT for its final then, so that the
  words (and an answer started on them) are in by the time the stop's decision wants them. A
  `Finalize` is one cheap round trip, and a caller who goes on simply adds more words.
- "pause", halfway to the stop: the end-of-turn model's first look (a costly check, and the
  model wants some silence after the speech, so not at every short gap).
A stop short enough that both fall in one window reports the pause alone. Speech after either,
before the stop, is a "resume": the caller went on, and what was started on the silence is dropped.

Two more come before a start, for a caller talking over the agent:
- "onset", after `ONSET_MS` of speech: the agent's audio is held at once, instead of after the
  whole `start_ms` (which guards turns, not holds: a hold costs nothing if it is let go quickly).
- "onset_lost": the run ended before it became a start (a click, a cough, a breath): the hold
  is let go at once, before the caller hears more than a hiccup.

Time is counted in samples, so window boundaries and thresholds compare exactly.
"""

from __future__ import annotations

from pipelines.vad.base import VadEvent

# Silence after which a streaming STT is asked for its final: one Silero window (32 ms), two
# webrtcvad ones (40 ms).
QUIET_MS = 30.0
# Speech before the agent's audio is held for a possible interruption: two Silero windows (64 ms),
# three webrtcvad ones (60 ms). One window alone is too often a click.
ONSET_MS = 60.0


class SpeechSegmenter:
    def __init__(self, start_ms: float, stop_ms: float, sample_rate: int = 16000) -> None:
        if start_ms <= 0 or stop_ms <= 0:
            raise ValueError("start_ms and stop_ms must be positive")
        self.sample_rate = sample_rate
        self._start_samples = start_ms * sample_rate / 1000.0
        self._stop_samples = stop_ms * sample_rate / 1000.0
        self._quiet_samples = QUIET_MS * sample_rate / 1000.0
        self._onset_samples = ONSET_MS * sample_rate / 1000.0
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
        self._quieted = False  # ... and its "quiet" event
        self._onset_sent = False  # the current candidate start run has had its "onset"

    def _ms(self, samples: int) -> float:
        return samples * 1000.0 / self.sample_rate

    def update(self, is_speech: bool, window_start: int, window_len: int) -> VadEvent | None:
        """Feed one classified window ([window_start, window_start+window_len) in samples)."""
        window_end = window_start + window_len
        if not self.speaking:
            if not is_speech:
                run_start = self._run_start if self._onset_sent else None
                self._run_start = None
                self._onset_sent = False
                if run_start is None:
                    return None
                return VadEvent("onset_lost", self._ms(window_start),
                                speech_ms=self._ms(window_start - run_start))
            if self._run_start is None:
                self._run_start = window_start
            run = window_end - self._run_start
            if run >= self._start_samples:
                self.speaking = True
                self._speech_start = self._run_start
                self._run_start = None
                self._onset_sent = False
                return VadEvent("start", self._ms(self._speech_start))
            if not self._onset_sent and run >= self._onset_samples:
                self._onset_sent = True
                return VadEvent("onset", self._ms(self._run_start))
            return None
        if is_speech:
            self._run_start = None
            if self._quieted:  # speech again after a "quiet" or "pause": the caller goes on
                self._paused = self._quieted = False
                return VadEvent("resume", self._ms(window_start))
            return None
        if self._run_start is None:
            self._run_start = window_start
            self._paused = self._quieted = False
        silent = window_end - self._run_start
        if silent >= self._stop_samples:
            self.speaking = False
            stop = self._run_start
            self._run_start = None
            return VadEvent("stop", self._ms(stop), speech_ms=self._ms(stop - self._speech_start))
        speech_ms = self._ms(self._run_start - self._speech_start)
        if not self._paused and silent * 2 >= self._stop_samples:
            self._paused = self._quieted = True
            return VadEvent("pause", self._ms(self._run_start), speech_ms=speech_ms)
        if not self._quieted and silent >= self._quiet_samples:
            self._quieted = True
            return VadEvent("quiet", self._ms(self._run_start), speech_ms=speech_ms)
        return None
