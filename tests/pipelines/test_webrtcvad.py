"""webrtcvad engine: same VadStream contract as Silero, on real Piper speech."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.settings import VadSettings
from pipelines.vad.base import VadEvent
from pipelines.vad.factory import build_vad_stream
from pipelines.vad.webrtc import WebRtcVadStream
from tests.speech import frames, speech_bounds_ms, synthesize, with_silence


async def feed(stream: WebRtcVadStream, audio: np.ndarray, size: int = 320) -> list[VadEvent]:
    events = []
    for frame in frames(audio, size):
        ev = await stream.process(frame)
        if ev is not None:
            events.append(ev)
    while (ev := await stream.process(np.zeros(0, np.int16))) is not None:
        events.append(ev)
    return events


async def test_detects_a_sentence_with_backdated_edges() -> None:
    settings = VadSettings(engine="webrtc", start_ms=200, stop_ms=300, webrtc_mode=2)
    audio = with_silence(synthesize("What time do you open tomorrow?"), 600, 1200)
    true_start, true_end = speech_bounds_ms(audio)
    stream = build_vad_stream(settings)
    assert isinstance(stream, WebRtcVadStream)
    events = await feed(stream, audio)
    start, stop = [e for e in events if e.kind in ("start", "stop")]
    assert (start.kind, stop.kind) == ("start", "stop")
    assert abs(start.at_ms - true_start) <= 60
    assert abs(stop.at_ms - true_end) <= 200
    assert stop.speech_ms == pytest.approx(stop.at_ms - start.at_ms)
    assert not stream.speaking


async def test_pure_silence_is_silent_and_probability_is_binary() -> None:
    stream = WebRtcVadStream(VadSettings(engine="webrtc"))
    assert await feed(stream, np.zeros(16000 * 2, np.int16)) == []
    assert stream.probability == 0.0
    await stream.process(synthesize("Hello there.")[3200:3520])
    assert stream.probability in (0.0, 1.0)


async def test_odd_frame_sizes_give_the_same_events() -> None:
    settings = VadSettings(engine="webrtc")
    audio = with_silence(synthesize("Hello there."), 400, 800)
    reference = await feed(WebRtcVadStream(settings), audio, 320)
    odd = await feed(WebRtcVadStream(settings), audio, 208)
    assert [(e.kind, e.at_ms) for e in odd] == [(e.kind, e.at_ms) for e in reference]
    assert [e.kind for e in reference if e.kind in ("start", "stop")] == ["start", "stop"]


async def test_reset_and_bad_input() -> None:
    stream = WebRtcVadStream(VadSettings(engine="webrtc"))
    with pytest.raises(ValueError, match="int16"):
        await stream.process(np.zeros(320, np.float64))
    for frame in frames(with_silence(synthesize("Hello there."), 200)):
        await stream.process(frame)
    assert stream.speaking
    stream.reset()
    assert not stream.speaking
    await stream.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await stream.process(np.zeros(320, np.int16))


def test_factory_needs_silero_for_the_silero_engine() -> None:
    with pytest.raises(ValueError, match="Silero"):
        build_vad_stream(VadSettings(engine="silero"))
