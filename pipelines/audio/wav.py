"""Mono int16 WAV files and raw PCM helpers (stdlib `wave`, no extra dependency)."""

from __future__ import annotations

import io
import struct
import wave
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pipelines.audio.frames import as_int16


def pcm16_from_bytes(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Little-endian signed 16-bit PCM bytes → int16 samples (an odd trailing byte is dropped)."""
    usable = len(data) - (len(data) % 2)
    return np.frombuffer(data[:usable], dtype="<i2").astype(np.int16, copy=False)


def pcm16_to_bytes(samples: np.ndarray) -> bytes:
    """int16 samples → little-endian signed 16-bit PCM bytes."""
    return as_int16(samples).astype("<i2", copy=False).tobytes()


def float_to_int16(samples: np.ndarray) -> np.ndarray:
    return as_int16(np.asarray(samples, dtype=np.float32))


def int16_to_float(samples: np.ndarray) -> np.ndarray:
    return as_int16(samples).astype(np.float32) / 32768.0


def _decode_frames(raw: bytes, width: int, channels: int) -> np.ndarray:
    if width == 1:  # 8-bit WAV is unsigned
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.int32) - 128) << 8
    elif width == 2:
        x = np.frombuffer(raw, dtype="<i2").astype(np.int32)
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        x = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16))
        x = np.where(x & 0x800000, x - 0x1000000, x) >> 8
    elif width == 4:
        x = np.frombuffer(raw, dtype="<i4").astype(np.int64) >> 16
    else:
        raise ValueError(f"unsupported WAV sample width {width} bytes")
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
    return np.clip(x, -32768, 32767).astype(np.int16)


def read_wav(source: str | Path | BinaryIO) -> tuple[np.ndarray, int]:
    """Read a PCM WAV file as mono int16 (channels averaged) and its sample rate."""
    try:
        with wave.open(str(source) if isinstance(source, (str, Path)) else source, "rb") as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except wave.Error as exc:
        raise ValueError(f"not a PCM WAV file: {exc}") from None
    return _decode_frames(raw, width, channels), rate


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """A whole WAV file held in memory (e.g. sent base64 by an app) → mono int16 samples and
    the sample rate; ValueError saying what is wrong with anything else."""
    if not data:
        raise ValueError("the WAV data is empty")
    try:
        samples, rate = read_wav(io.BytesIO(data))
    except (EOFError, struct.error) as exc:
        raise ValueError("not a PCM WAV file: its header is truncated"
                         + (f" ({exc})" if str(exc) else "")) from None
    except ValueError as exc:
        if str(exc).startswith("not a PCM WAV file") or "sample width" in str(exc):
            raise
        raise ValueError(f"not a PCM WAV file: malformed audio data ({exc})") from None
    if rate <= 0:
        raise ValueError(f"the WAV file has an invalid sample rate ({rate})")
    if not len(samples):
        raise ValueError("the WAV file holds no audio frames")
    return samples, rate


def write_wav(target: str | Path | BinaryIO, samples: np.ndarray, sample_rate: int) -> None:
    """Write mono int16 samples as a 16-bit PCM WAV."""
    with wave.open(str(target) if isinstance(target, (str, Path)) else target, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm16_to_bytes(samples))


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    write_wav(buf, samples, sample_rate)
    return buf.getvalue()
