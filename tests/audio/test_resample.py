"""Streaming resampler: frequency and level preserved, chunking does not change the result."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.audio.resample import StreamResampler, resample


def tone(rate: int, seconds: float = 1.0, freq: float = 1000.0, amp: float = 10000.0):
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(np.sin(2 * np.pi * freq * t) * amp).astype(np.int16)


def dominant_freq(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    k = int(np.argmax(spec))
    # parabolic interpolation for sub-bin accuracy
    a, b, c = np.log(spec[k - 1 : k + 2] + 1e-12)
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / len(x)


@pytest.mark.parametrize(("src", "dst"), [(8000, 16000), (16000, 8000), (22050, 8000),
                                          (24000, 16000)])
def test_1khz_tone_keeps_frequency_and_level(src, dst):
    y = resample(tone(src), src, dst)
    assert abs(len(y) - dst) <= 2
    mid = y[dst // 10 : -dst // 10]  # ignore filter edges
    assert abs(dominant_freq(mid, dst) - 1000.0) < 2.0
    rms = np.sqrt(np.mean(mid.astype(np.float64) ** 2))
    assert abs(rms / (10000 / np.sqrt(2)) - 1.0) < 0.01


@pytest.mark.parametrize(("src", "dst"), [(8000, 16000), (22050, 8000), (24000, 16000)])
def test_streaming_chunked_equals_whole(src, dst):
    x = tone(src, 0.7, 440.0)
    whole = StreamResampler(src, dst)
    ref = np.concatenate([whole.process(x), whole.flush()])
    chunked = StreamResampler(src, dst)
    rng = np.random.default_rng(1)
    parts, pos = [], 0
    while pos < len(x):
        n = int(rng.integers(1, 700))
        parts.append(chunked.process(x[pos : pos + n]))
        pos += n
    parts.append(chunked.flush())
    got = np.concatenate(parts)
    assert len(got) == len(ref)
    assert np.array_equal(got, ref)


def test_equal_rates_pass_through():
    r = StreamResampler(16000, 16000)
    x = tone(16000, 0.02)
    assert r.passthrough
    assert r.process(x) is not None and np.array_equal(r.process(x), x)
    assert len(r.flush()) == 0


def test_flush_resets_for_next_segment():
    r = StreamResampler(24000, 8000)
    x = tone(24000, 0.2)
    first = np.concatenate([r.process(x), r.flush()])
    second = np.concatenate([r.process(x), r.flush()])
    assert np.array_equal(first, second)
