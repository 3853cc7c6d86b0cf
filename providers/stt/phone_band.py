"""Telling phone audio from wideband audio, for STT models trained on wideband speech.

The bundled pocketsphinx model was trained on 16 kHz microphone speech, and its cepstral mean
normalisation (CMN) starts from a value that suits that channel. A phone call carries 300-3400 Hz
(also when a carrier hands it over at 16 kHz), and live CMN needs seconds of speech to get there,
so the first sentences of every call used to be decoded badly. Starting CMN at `PHONE_CMN`
instead fixes that for phone audio — and hurts wideband audio just as much — so the stream looks
at the caller's first loud frames and picks the start value that matches the channel.

`PHONE_CMN` is where live CMN settled on narrowband μ-law speech (Piper voice → 8 kHz μ-law →
16 kHz, 12 varied sentences). Starting there, ten held-out caller questions through the same
channel came out with 36 of 54 words right instead of 19 ("what are your opening hours" instead
of "what are your opening are"); the same questions as wideband audio kept 44 of 63 words with
the model's own start value but fell to 27 with this one. CMN still adapts to every caller.
"""

from __future__ import annotations

import numpy as np

PHONE_CMN = "48.4,36.0,-37.2,36.6,-6.8,-16.0,19.3,-23.4,5.3,6.9,-6.0,11.3,-10.4"

# Frames quieter than this (RMS, int16 units; about -40 dBFS) say nothing about the channel.
_LOUD_RMS = 300.0
# A phone channel has essentially nothing above its 3.4-4 kHz band edge: resampled 8 kHz μ-law
# speech shows ~1e-8 of its energy above 4.2 kHz, wideband speech ~3e-4 (1e-6 in a quiet vowel).
_EDGE_HZ = 4200.0
_NARROW_RATIO = 1e-5
_DECIDE_FRAMES = 10  # loud frames looked at (~200 ms of speech)
_MAX_HOLD_S = 0.5  # decide after this much audio since the first loud frame, loud or not


class BandProbe:
    """Fed the stream's audio (16 kHz int16) until it can tell narrowband from wideband.

    `feed` returns None while undecided, then True (phone audio) or False (wideband) once.
    Once `holding` (a loud frame was seen), the caller should keep the audio back from the
    decoder until the verdict, so that the whole utterance is decoded with the right CMN."""

    def __init__(self, sample_rate: int = 16000) -> None:
        self._rate = sample_rate
        self._high = 0.0
        self._total = 0.0
        self._loud = 0
        self._held_samples = 0

    @property
    def holding(self) -> bool:
        return self._loud > 0

    def feed(self, pcm: np.ndarray) -> bool | None:
        x = np.asarray(pcm, dtype=np.float64)
        if not len(x):
            return None
        loud = float(np.sqrt(np.mean(x * x))) >= _LOUD_RMS
        if not loud and not self.holding:
            return None
        self._held_samples += len(x)
        if loud:
            self._loud += 1
            spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
            freqs = np.fft.rfftfreq(len(x), 1.0 / self._rate)
            self._high += float(spectrum[freqs >= _EDGE_HZ].sum())
            self._total += float(spectrum.sum())
        if self._loud >= _DECIDE_FRAMES or self._held_samples >= _MAX_HOLD_S * self._rate:
            return self.verdict()
        return None

    def verdict(self) -> bool:
        """Phone audio? (Decide now, on what was seen; nothing loud counts as phone audio.)"""
        return self._total <= 0 or self._high < self._total * _NARROW_RATIO
