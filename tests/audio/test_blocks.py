"""Framer, ring buffer, WAV/PCM helpers and the background mixer."""

from __future__ import annotations

import io

import numpy as np
import pytest

from pipelines.audio.frames import FRAME_SAMPLES, SAMPLE_RATE, Framer, samples_per_frame
from pipelines.audio.mixer import LoopingSource, mix
from pipelines.audio.ringbuffer import RingBuffer
from pipelines.audio.wav import (
    pcm16_from_bytes,
    pcm16_to_bytes,
    read_wav,
    wav_bytes,
    write_wav,
)


def test_constants():
    assert (SAMPLE_RATE, FRAME_SAMPLES) == (16000, 320)
    assert samples_per_frame(8000) == 160
    with pytest.raises(ValueError):
        samples_per_frame(22050, 1)  # 22.05 samples


def test_framer_rechunks_with_carry_over():
    f = Framer()
    x = np.arange(1000, dtype=np.int16)
    frames = []
    for n in (1, 7, 319, 320, 1, 200, 152):
        chunk, x = x[:n], x[n:]
        frames += f.push(chunk)
    assert all(len(fr) == 320 for fr in frames)
    assert len(frames) == 3 and f.pending == 1000 - 960
    assert np.array_equal(np.concatenate(frames), np.arange(960, dtype=np.int16))
    tail = f.flush()
    assert tail is not None and len(tail) == 320
    assert np.array_equal(tail[:40], np.arange(960, 1000, dtype=np.int16))
    assert not tail[40:].any() and f.flush() is None


def test_framer_frames_are_independent_copies():
    f = Framer(4)
    out = f.push(np.arange(8, dtype=np.int16))
    out[0][:] = 0
    assert list(out[1]) == [4, 5, 6, 7]


def test_ring_buffer_keeps_the_last_n():
    rb = RingBuffer(10)
    rb.append(np.arange(4, dtype=np.int16))
    assert list(rb.last(10)) == [0, 1, 2, 3]
    rb.append(np.arange(4, 12, dtype=np.int16))
    assert len(rb) == 10 and rb.total_written == 12
    assert list(rb.last(10)) == list(range(2, 12))
    assert list(rb.last(3)) == [9, 10, 11]
    rb.append(np.arange(100, 125, dtype=np.int16))
    assert list(rb.last(4)) == [121, 122, 123, 124]
    rb.clear()
    assert len(rb.last(5)) == 0


def test_pcm_and_wav_round_trip(tmp_path):
    x = (np.sin(np.arange(800) / 7) * 20000).astype(np.int16)
    assert np.array_equal(pcm16_from_bytes(pcm16_to_bytes(x)), x)
    assert pcm16_to_bytes(np.array([1], np.int16)) == b"\x01\x00"  # little-endian on the wire
    p = tmp_path / "a.wav"
    write_wav(p, x, 8000)
    y, rate = read_wav(p)
    assert rate == 8000 and np.array_equal(x, y)
    y2, _ = read_wav(io.BytesIO(wav_bytes(x, 16000)))
    assert np.array_equal(x, y2)


def test_read_wav_downmixes_stereo(tmp_path):
    import wave

    p = tmp_path / "s.wav"
    with wave.open(str(p), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.array([100, 300, -100, -300], "<i2").tobytes())
    y, _ = read_wav(p)
    assert list(y) == [200, -200]


def test_read_wav_rejects_garbage():
    with pytest.raises(ValueError):
        read_wav(io.BytesIO(b"not a wav"))


def test_mix_saturates_and_pads():
    out = mix(np.array([30000, 1, 2], np.int16), np.array([30000], np.int16))
    assert list(out) == [32767, 1, 2]


def test_looping_source_volume_and_loop():
    src = LoopingSource(np.array([1000, 2000, 3000], np.int16), volume=0.5, loop=True)
    assert list(src.read(5)) == [500, 1000, 1500, 500, 1000]
    once = LoopingSource(np.array([1000, 2000], np.int16), volume=1.0, loop=False)
    assert list(once.read(3)) == [1000, 2000, 0] and once.exhausted
    under = LoopingSource(np.array([100], np.int16), volume=1.0)
    assert list(under.mix_into(np.array([1, 2], np.int16))) == [101, 102]
