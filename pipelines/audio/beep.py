"""Detecting an answering machine's beep: a steady pure tone in the 800–2000 Hz band.

Voicemail systems mark "start recording now" with a sine tone (typically 1000 Hz, some 850,
1400 or 2000 Hz) lasting a few hundred milliseconds. Speech never concentrates almost all of its
energy in one narrow band for that long, and its pitch moves; a beep does both. So, per 20 ms
frame: take the spectrum (Hann window, 50 Hz bins at 16 kHz), find the strongest bin in the
band, and call the frame "tonal" when that peak (±1 bin) holds most of the frame's energy and
the frame is loud enough. A beep is `min_ms` of consecutive tonal frames whose peak stays within
`max_drift_hz`.

Transport-agnostic: 16 kHz mono int16 frames of any length in, a `Beep` out when one completes.
Costs one 320-point real FFT per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.audio.frames import SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class Beep:
    frequency_hz: float
    start_ms: float  # stream position where the tone began
    duration_ms: float  # tonal run length when it was recognised (it may continue)


class BeepDetector:
    def __init__(
        self,
        *,
        sample_rate: int = SAMPLE_RATE,
        low_hz: float = 800.0,
        high_hz: float = 2000.0,
        min_ms: float = 150.0,
        purity: float = 0.8,
        min_rms: float = 300.0,  # about -40 dBFS: a beep is loud; line noise is not a beep
        max_drift_hz: float = 60.0,
    ) -> None:
        self.sample_rate = sample_rate
        self.low_hz = low_hz
        self.high_hz = high_hz
        self.min_ms = min_ms
        self.purity = purity
        self.min_rms = min_rms
        self.max_drift_hz = max_drift_hz
        self.stream_ms = 0.0
        self._run_ms = 0.0
        self._run_start_ms = 0.0
        self._run_hz = 0.0
        self._reported = False
        self._windows: dict[int, np.ndarray] = {}

    @property
    def in_tone(self) -> bool:
        """A tonal run is going on (a beep still sounding, or one starting)."""
        return self._run_ms > 0

    def push(self, frame: np.ndarray) -> Beep | None:
        """Feed one frame; returns the beep once it has lasted `min_ms` (once per tone)."""
        n = len(frame)
        if n == 0:
            return None
        frame_ms = n * 1000.0 / self.sample_rate
        start_ms = self.stream_ms
        self.stream_ms += frame_ms
        hz = self._tone(frame)
        if hz is None or (self._run_ms and abs(hz - self._run_hz) > self.max_drift_hz):
            self._run_ms = 0.0
            self._reported = False
            if hz is None:
                return None
        if not self._run_ms:
            self._run_start_ms = start_ms
            self._run_hz = hz
        self._run_ms += frame_ms
        if self._run_ms >= self.min_ms and not self._reported:
            self._reported = True
            return Beep(round(self._run_hz, 1), self._run_start_ms, self._run_ms)
        return None

    def _tone(self, frame: np.ndarray) -> float | None:
        """The frame's dominant in-band frequency if the frame is a pure, loud tone."""
        x = frame.astype(np.float64)
        if float(np.sqrt(np.mean(x * x))) < self.min_rms:
            return None
        n = len(x)
        window = self._windows.get(n)
        if window is None:
            window = self._windows[n] = np.hanning(n)
        power = np.abs(np.fft.rfft(x * window)) ** 2
        total = float(power[1:].sum())  # DC is not signal
        if total <= 0.0:
            return None
        bin_hz = self.sample_rate / n
        lo = max(1, int(np.ceil(self.low_hz / bin_hz)))
        hi = min(len(power) - 1, int(self.high_hz / bin_hz))
        if hi < lo:
            return None
        k = lo + int(np.argmax(power[lo : hi + 1]))
        # A Hann window spreads a sine over ±1 bin (±2 when it sits between bins).
        peak = float(power[max(1, k - 2) : k + 3].sum())
        if peak / total < self.purity:
            return None
        # Parabolic interpolation of the peak for a frequency finer than the bin size.
        a, b, c = power[k - 1], power[k], power[min(k + 1, len(power) - 1)]
        denom = a - 2 * b + c
        offset = 0.5 * (a - c) / denom if denom else 0.0
        return float((k + offset) * bin_hz)
