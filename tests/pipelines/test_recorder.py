"""CallRecorder: both tracks on the stream's clock, cleared audio left out, bounded memory."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from pipelines.audio.recorder import CallRecorder

RATE = 8000
FRAME = 160  # 20 ms


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def read(path: Path) -> tuple[np.ndarray, int, int]:
    with wave.open(str(path), "rb") as w:
        data = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        return data.reshape(-1, w.getnchannels()), w.getframerate(), w.getnchannels()


def test_stereo_alignment_and_clear(tmp_path: Path) -> None:
    clock = Clock()
    rec = CallRecorder(str(tmp_path / "r.wav"), sample_rate=RATE, channels=2, t0=clock.t,
                       clock=clock)
    # 3 s of call: caller speaks 0.5-1.0 s; agent frames play 1.5-2.5 s, but a clear at 2.0 s
    # drops what Plivo still held (sent 200 ms ahead of the clock, like the playout does).
    sent_until = 0.0
    for i in range(150):
        now = i * 0.02
        clock.t = 100.0 + now
        loud = 0.5 <= now < 1.0
        rec.caller(np.full(FRAME, 5000 if loud else 0, np.int16))
        while sent_until < min(now + 0.2, 2.5) and sent_until >= 1.5 - 1e-9 \
                and not (2.0 <= now):
            rec.agent(np.full(FRAME, 7000, np.int16), 100.0 + sent_until)
            sent_until += 0.02
        if sent_until < 1.5 and now + 0.2 >= 1.5:
            sent_until = 1.5
        if abs(now - 2.0) < 1e-9:
            rec.cut(clock.t)
    info = rec.finish(100.0 + 3.0)
    data, rate, channels = read(tmp_path / "r.wav")
    assert (rate, channels) == (RATE, 2)
    assert info.frames == len(data) == 3 * RATE
    caller, agent = data[:, 0], data[:, 1]
    assert np.all(caller[int(0.5 * RATE):int(1.0 * RATE)] == 5000)
    assert not caller[:int(0.5 * RATE)].any() and not caller[int(1.0 * RATE):].any()
    assert np.all(agent[int(1.5 * RATE):int(2.0 * RATE)] == 7000)
    assert not agent[:int(1.5 * RATE)].any()
    assert not agent[int(2.0 * RATE):].any(), "cleared audio must not be in the recording"
    assert rec.agent_samples_cut > 0


def test_mono_mixes_and_end_drops_unplayed(tmp_path: Path) -> None:
    clock = Clock()
    rec = CallRecorder(str(tmp_path / "m.wav"), sample_rate=RATE, channels=1, t0=clock.t,
                       clock=clock)
    rec.caller(np.full(FRAME, 1000, np.int16))
    rec.agent(np.full(FRAME, 2000, np.int16), 100.0)
    rec.agent(np.full(FRAME, 2000, np.int16), 100.02)  # queued, but the call ends at 30 ms
    info = rec.finish(100.03)
    data, _, channels = read(tmp_path / "m.wav")
    assert channels == 1 and info.channels == 1
    assert np.all(data[:FRAME, 0] == 3000)
    assert len(data) == FRAME + int(0.01 * RATE)


def test_memory_stays_bounded(tmp_path: Path) -> None:
    clock = Clock()
    rec = CallRecorder(str(tmp_path / "b.wav"), sample_rate=RATE, channels=2, t0=clock.t,
                       clock=clock)
    for i in range(60 * 50):  # a minute
        clock.t = 100.0 + i * 0.02
        rec.caller(np.ones(FRAME, np.int16))
        assert len(rec._caller) <= 2 * RATE
    info = rec.finish()
    assert info.frames == 60 * RATE


def test_write_failure_is_kept_not_raised(tmp_path: Path) -> None:
    clock = Clock()
    rec = CallRecorder(str(tmp_path / "f.wav"), sample_rate=RATE, channels=2, t0=clock.t,
                       clock=clock)

    class Broken:
        def writeframesraw(self, data: bytes) -> None:
            raise OSError(28, "No space left on device")

        def close(self) -> None:
            pass

    rec._wav = Broken()  # type: ignore[assignment]
    for i in range(100):
        clock.t = 100.0 + i * 0.02
        rec.caller(np.ones(FRAME, np.int16))  # never raises
    with pytest.raises(OSError):
        rec.finish()
