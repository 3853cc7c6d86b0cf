"""smart-turn log-mel features against the canonical reference, transformers'
WhisperFeatureExtractor (numpy path; test-only dependency in the `dev` extra), configured the way
smart-turn v3 was trained: chunk_length 8, do_normalize, input = last 8 s zero-padded at the front.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.turn.features import N_SAMPLES, last_8s, log_mel, log_mel_batch, mel_filters
from tests.speech import synthesize, with_silence


@pytest.fixture(scope="module")
def reference():
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(chunk_length=8)
    assert (extractor.n_fft, extractor.hop_length, extractor.feature_size) == (400, 160, 80)

    def compute(audio_int16: np.ndarray) -> np.ndarray:
        x = audio_int16.astype(np.float32) / 32768.0
        x = x[-N_SAMPLES:]
        x = np.pad(x, (N_SAMPLES - len(x), 0))  # smart-turn pads at the front itself
        out = extractor(
            x,
            sampling_rate=16000,
            padding="max_length",
            max_length=N_SAMPLES,
            truncation=True,
            do_normalize=True,
            return_tensors="np",
        )
        return out.input_features[0]

    return compute


def test_mel_filters_match_slaney_reference() -> None:
    from transformers.audio_utils import mel_filter_bank

    ref = mel_filter_bank(
        num_frequency_bins=201,
        num_mel_filters=80,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=16000,
        norm="slaney",
        mel_scale="slaney",
    )
    np.testing.assert_allclose(mel_filters(), ref.T, atol=1e-9)


def _cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    speech = synthesize("What time do you open tomorrow?")
    long_speech = np.concatenate(
        [synthesize("I wanted to ask about my bill from last month."), speech] * 3
    )
    return {
        "short speech (front-padded)": with_silence(speech, 0, 400),
        "longer than 8 s (truncated to the last 8 s)": long_speech,
        "white noise": (rng.standard_normal(40000) * 2000).astype(np.int16),
        "quiet tone": (np.sin(np.arange(24000) * 2 * np.pi * 440 / 16000) * 200).astype(np.int16),
        "loud, clipped": np.clip(rng.standard_normal(16000) * 30000, -32768, 32767).astype(
            np.int16
        ),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_features_match_reference_within_1e3(reference, name: str) -> None:
    audio = _cases()[name]
    ours = log_mel(audio)
    ref = reference(audio)
    assert ours.shape == ref.shape == (80, 800)
    assert ours.dtype == np.float32
    assert np.abs(ours - ref).max() < 1e-3


def test_long_input_keeps_only_the_last_8_seconds() -> None:
    tail = synthesize("What time do you open tomorrow?")
    noise = (np.random.default_rng(2).standard_normal(N_SAMPLES) * 3000).astype(np.int16)
    audio = np.concatenate([noise, tail])
    np.testing.assert_array_equal(log_mel(audio), log_mel(audio[-N_SAMPLES:]))
    x = last_8s(tail)
    assert len(x) == N_SAMPLES and not x[: N_SAMPLES - len(tail)].any()


def test_float_input_equals_int16_input_and_batch_stacks() -> None:
    audio = synthesize("Hello there.")
    np.testing.assert_allclose(log_mel(audio), log_mel(audio / 32768.0), atol=1e-6)
    batch = log_mel_batch([audio, audio[:8000]])
    assert batch.shape == (2, 80, 800)
    np.testing.assert_array_equal(batch[0], log_mel(audio))


def test_empty_audio_and_bad_input() -> None:
    assert np.isfinite(log_mel(np.zeros(0, np.int16))).all()
    with pytest.raises(ValueError, match="int16"):
        log_mel(np.zeros(100, np.int32))
    with pytest.raises(ValueError, match="mono"):
        log_mel(np.zeros((2, 100), np.int16))
    with pytest.raises(ValueError):
        log_mel_batch([])
