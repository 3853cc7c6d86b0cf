"""Input checking shared by the VAD engines: bad frames get a clear error, not a numpy crash."""

from __future__ import annotations

import numpy as np


def as_int16_frame(frame: np.ndarray) -> np.ndarray:
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"VAD frames must be numpy int16 arrays, got {type(frame).__name__}")
    if frame.dtype != np.int16:
        raise ValueError(f"VAD frames must be int16 PCM, got {frame.dtype}")
    if frame.ndim != 1:
        raise ValueError(f"VAD frames must be mono (1-D), got shape {frame.shape}")
    return frame
