"""A custom thinking sound: a built-in name or a WAV, played at the engine's rate."""

from __future__ import annotations

import base64
import io
import wave

import numpy as np
import pytest

from pipelines.audio.frames import SAMPLE_RATE
from pipelines.settings import ConversationSettings
from pipelines.thinking_audio import custom_clip


def wav_b64(samples: np.ndarray, rate: int) -> str:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return base64.b64encode(buf.getvalue()).decode()


def test_custom_thinking_sound_is_resampled_to_the_engine_rate() -> None:
    tone = (np.sin(np.arange(8000) * 2 * np.pi * 300 / 8000) * 5000).astype(np.int16)
    clip = custom_clip(wav_b64(tone, 8000))
    assert clip.dtype == np.int16 and abs(len(clip) - SAMPLE_RATE) < 200
    assert len(custom_clip("hum")) > 0


def test_thinking_sound_is_validated() -> None:
    assert ConversationSettings(thinking_sound="office").thinking_sound == "office"
    with pytest.raises(ValueError, match="thinking_sound"):
        ConversationSettings(thinking_sound="disco")
