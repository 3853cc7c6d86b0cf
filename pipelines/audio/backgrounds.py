"""Built-in background sounds for `audio.mix`, generated in code (no audio files to ship).

Each is a seamless loop at 16 kHz, quiet at volume 1 (peaks well under full scale) so that the
agent's voice stays on top when mixed:

- `hold_music`: a soft, slowly changing chord progression (sine partials with smooth swells);
- `office`: room tone: pink-ish noise with a faint low murmur;
- `hum`: a mains-like 50 Hz hum with a few harmonics.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from pipelines.audio.frames import SAMPLE_RATE
from pipelines.audio.mixer import Background
from pipelines.audio.wav import decode_wav

RATE = SAMPLE_RATE


def _to_int16(x: np.ndarray, peak: float) -> np.ndarray:
    top = float(np.max(np.abs(x))) or 1.0
    return np.rint(x / top * peak * 32767).astype(np.int16)


def _hold_music() -> np.ndarray:
    """Four chords of 2 s each (C, Am, F, G), each note's amplitude a raised cosine so every
    chord swells in and out: the loop point falls on silence and never clicks."""
    chords = ((261.63, 329.63, 392.00), (220.00, 261.63, 329.63),
              (174.61, 220.00, 261.63), (196.00, 246.94, 293.66))
    n = 2 * RATE
    t = np.arange(n) / RATE
    swell = np.sin(np.pi * np.arange(n) / n) ** 2
    parts = []
    for chord in chords:
        x = np.zeros(n)
        for f in chord:
            x += np.sin(2 * np.pi * f * t) + 0.25 * np.sin(2 * np.pi * 2 * f * t)
        parts.append(x * swell)
    return _to_int16(np.concatenate(parts), 0.25)


def _office() -> np.ndarray:
    """4 s of room tone: white noise through a one-pole low-pass (a soft hiss with body), with
    a slow amplitude drift; fixed seed, so every call hears the same loop."""
    rng = np.random.default_rng(7)
    n = 4 * RATE
    white = rng.standard_normal(n)
    y = np.empty(n)
    acc = 0.0
    for i, v in enumerate(white):  # 64k samples once per process: cheap enough
        acc = 0.97 * acc + 0.03 * v
        y[i] = acc
    drift = 1.0 + 0.3 * np.sin(2 * np.pi * np.arange(n) / n)  # one period: loops cleanly
    fade = min(RATE // 20, n // 2)  # cross-fade the ends so the loop point is smooth
    y[:fade] = y[:fade] * np.linspace(0, 1, fade) + y[-fade:] * np.linspace(1, 0, fade)
    return _to_int16((y * drift)[:-fade], 0.12)


def _hum() -> np.ndarray:
    n = RATE  # 1 s holds whole periods of 50 Hz and its harmonics
    t = np.arange(n) / RATE
    x = sum(a * np.sin(2 * np.pi * f * t) for f, a in ((50, 1.0), (100, 0.5), (150, 0.25)))
    return _to_int16(np.asarray(x), 0.08)


BUILTIN: dict[str, Callable[[], np.ndarray]] = {
    "hold_music": _hold_music, "office": _office, "hum": _hum,
}


@lru_cache(maxsize=len(BUILTIN))
def builtin_sound(name: str) -> np.ndarray:
    """The named built-in loop at `RATE` (generated once per process). KeyError if unknown."""
    return BUILTIN[name]()


def background(sound: str, volume: float = 0.5, loop: bool = True) -> Background:
    """`sound` as `audio.mix` gives it: a built-in name, or a WAV file in base64. ValueError
    when it is neither (or the WAV is malformed, or the volume out of 0..1)."""
    if sound in BUILTIN:
        return Background(builtin_sound(sound), RATE, volume, loop)
    try:
        data = base64.b64decode(sound, validate=True)
    except (binascii.Error, ValueError):
        data = b""
    if not data.startswith(b"RIFF"):  # a misspelt name can be valid base64 ("jazz")
        raise ValueError(f"sound: neither a built-in sound ({', '.join(sorted(BUILTIN))}) "
                         "nor base64 WAV data")
    try:
        clip, rate = decode_wav(data)
    except ValueError as exc:
        raise ValueError(f"sound: {exc}") from None
    return Background(clip, rate, volume, loop)
