"""Whisper-style log-mel features for smart-turn v3, in numpy.

smart-turn v3 was trained on transformers' `WhisperFeatureExtractor(chunk_length=8)` output for
the last 8 s of the turn, zero-padded at the FRONT, with `do_normalize=True`. Reproduced here:

1. int16 -> float in [-1, 1]; keep the last 8 s (128000 samples), zero-pad at the front.
2. zero-mean / unit-variance over the whole padded 8 s buffer (variance eps 1e-7) — the
   reference normalises after padding, so the padding takes part in the statistics.
3. centred STFT: reflect-pad n_fft/2 at both ends, periodic Hann window, n_fft 400, hop 160
   -> 801 frames; power spectrum |X|^2.
4. 80 Slaney-scale, Slaney-normalised triangular mel filters over 0..8 kHz.
5. log10(max(mel, 1e-10)); drop the last frame (-> 800); clamp to (global max - 8); (x + 4) / 4.

Output: float32 [80, 800]. tests/pipelines/test_features.py compares against transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 80
SECONDS = 8
N_SAMPLES = SECONDS * SAMPLE_RATE  # 128000
N_FRAMES = N_SAMPLES // HOP  # 800
_MEL_FLOOR = 1e-10
_VAR_EPS = 1e-7


def _hz_to_mel(hz: npt.ArrayLike) -> np.ndarray:
    """Slaney (Auditory Toolbox) mel scale: linear to 1 kHz, logarithmic above."""
    f_sp = 200.0 / 3.0  # Hz per mel in the linear part
    brk_hz = 1000.0
    brk_mel = brk_hz / f_sp  # 15 mel
    log_step = np.log(6.4) / 27.0  # ratio per mel in the log part
    hz = np.asarray(hz, dtype=np.float64)
    return np.where(
        hz < brk_hz, hz / f_sp, brk_mel + np.log(np.maximum(hz, brk_hz) / brk_hz) / log_step
    )


def _mel_to_hz(mel: npt.ArrayLike) -> np.ndarray:
    f_sp = 200.0 / 3.0
    brk_hz = 1000.0
    brk_mel = brk_hz / f_sp
    log_step = np.log(6.4) / 27.0
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel < brk_mel, mel * f_sp, brk_hz * np.exp(log_step * (mel - brk_mel)))


@lru_cache(maxsize=4)
def mel_filters(
    sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS
) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular filters, each scaled to unit area (Slaney norm)."""
    bins_hz = np.arange(n_fft // 2 + 1) * (sample_rate / n_fft)
    edges_hz = _mel_to_hz(np.linspace(0.0, _hz_to_mel(sample_rate / 2.0), n_mels + 2))
    lo, mid, hi = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bins_hz[None, :] - lo) / (mid - lo)
    falling = (hi - bins_hz[None, :]) / (hi - mid)
    tri = np.clip(np.minimum(rising, falling), 0.0, None)
    tri *= 2.0 / (hi - lo)  # equal area per filter
    tri.setflags(write=False)
    return tri


@lru_cache(maxsize=4)
def _window(n_fft: int) -> np.ndarray:
    # Periodic Hann (the DFT-even form torch.hann_window uses): length n_fft of an n_fft+1 cycle.
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    w.setflags(write=False)
    return w


def last_8s(audio: np.ndarray) -> np.ndarray:
    """float64 waveform in [-1, 1] of exactly 8 s: the last 8 s, zero-padded at the front."""
    a = np.asarray(audio)
    if a.ndim != 1:
        raise ValueError(f"audio must be mono (1-D), got shape {a.shape}")
    if a.dtype == np.int16:
        x = a.astype(np.float64) / 32768.0
    elif np.issubdtype(a.dtype, np.floating):
        x = a.astype(np.float64)
    else:
        raise ValueError(f"audio must be int16 PCM or float in [-1, 1], got {a.dtype}")
    if len(x) >= N_SAMPLES:
        return x[len(x) - N_SAMPLES :]
    out = np.zeros(N_SAMPLES, dtype=np.float64)
    if len(x):
        out[N_SAMPLES - len(x) :] = x
    return out


def log_mel(audio: np.ndarray) -> np.ndarray:
    """smart-turn v3 input features for one utterance (16 kHz): float32 [80, 800]."""
    x = last_8s(audio)
    x = (x - x.mean()) / np.sqrt(x.var() + _VAR_EPS)

    half = N_FFT // 2
    padded = np.pad(x, half, mode="reflect")
    n_frames = 1 + (len(padded) - N_FFT) // HOP  # 801
    # A turn is usually much shorter than 8 s: the zero padding in front is one constant value
    # after normalisation, so every frame lying wholly inside it has the same spectrum. Compute
    # that spectrum once and only transform the frames that touch the audio (about 3x less work
    # for a 2-3 s turn; the result is the same).
    pad = N_SAMPLES - min(len(audio), N_SAMPLES)
    n_const = 0 if pad < half else min(n_frames, (pad - half) // HOP + 1)
    first = max(0, n_const - 1)  # keep one constant frame: it stands for all of them
    # Frame matrix by index arithmetic: row t = padded[t*HOP : t*HOP + N_FFT].
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(first, n_frames)[:, None]
    spectrum = np.fft.rfft(padded[idx] * _window(N_FFT), axis=1)
    power = spectrum.real**2 + spectrum.imag**2  # [frames from `first`, 201]

    part = mel_filters() @ power.T  # [80, frames from `first`]
    if first:
        mel = np.empty((N_MELS, n_frames), dtype=part.dtype)
        mel[:, :first] = part[:, :1]
        mel[:, first:] = part
    else:
        mel = part  # [80, 801]
    logmel = np.log10(np.maximum(mel, _MEL_FLOOR))[:, :N_FRAMES]
    logmel = np.maximum(logmel, logmel.max() - 8.0)
    return ((logmel + 4.0) / 4.0).astype(np.float32)


def log_mel_batch(audios: Sequence[np.ndarray]) -> np.ndarray:
    """float32 [B, 80, 800] for the model's `input_features`."""
    if not audios:
        raise ValueError("log_mel_batch needs at least one utterance")
    return np.stack([log_mel(a) for a in audios])
