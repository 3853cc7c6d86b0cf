"""Small signal helpers for telephony tests: tones and where in a recording they are heard."""

from __future__ import annotations

import numpy as np


def tone(freq: float, seconds: float, rate: int, amp: float = 8000.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(np.sin(2 * np.pi * freq * t) * amp).astype(np.int16)


def tone_frames(x: np.ndarray, rate: int, freq: float, frame_ms: int = 10,
                min_level: float = 1000.0) -> np.ndarray:
    """Per frame: True where `freq` dominates and the level is above `min_level` (Goertzel)."""
    n = rate * frame_ms // 1000
    frames = x[: len(x) // n * n].astype(np.float64).reshape(-1, n)
    k = np.exp(-2j * np.pi * freq * np.arange(n) / rate)
    mag = np.abs(frames @ k) * 2 / n
    rms = np.sqrt(np.mean(frames**2, axis=1)) * np.sqrt(2)
    return (mag > min_level) & (mag > 0.6 * rms)


def heard_ms(x: np.ndarray, rate: int, freq: float, frame_ms: int = 10) -> float:
    return float(tone_frames(x, rate, freq, frame_ms).sum() * frame_ms)


def last_heard_ms(x: np.ndarray, rate: int, freq: float, frame_ms: int = 10) -> float | None:
    idx = np.flatnonzero(tone_frames(x, rate, freq, frame_ms))
    return float((idx[-1] + 1) * frame_ms) if len(idx) else None
