"""The voicemail screen reports each beep it hears as `voicemail.beep`, also after its verdict
(the machine's recording starts when the beep ends)."""

from __future__ import annotations

import numpy as np

from app.agent_config import VoicemailSettings
from app.calls.voicemail import VoicemailScreen
from pipelines import events as ev

FRAME = 320  # 20 ms at 16 kHz


def frames(audio: np.ndarray) -> list[np.ndarray]:
    return [audio[i:i + FRAME] for i in range(0, len(audio) - FRAME + 1, FRAME)]


def tone(hz: float, ms: int, amplitude: float = 8000.0) -> np.ndarray:
    t = np.arange(16 * ms) / 16000
    return np.rint(amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def test_each_beep_is_an_event_with_its_frequency_and_position() -> None:
    seen: list[ev.Event] = []
    screen = VoicemailScreen(VoicemailSettings(), "s1", seen.append)
    silence = np.zeros(16 * 500, dtype=np.int16)
    for chunk in (silence, tone(1000, 400), silence, tone(1400, 300), silence):
        for f in frames(chunk):
            screen.feed_frame(f)
    beeps = [e for e in seen if isinstance(e, ev.VoicemailBeep)]
    assert [round(b.frequency_hz, -1) for b in beeps] == [1000.0, 1400.0]
    assert beeps[0].at_ms == 500.0 and beeps[1].at_ms == 1400.0
    assert screen.detector.verdict is not None and screen.detector.verdict.method == "beep"
    assert beeps[0].type == "voicemail.beep" and "frequency_hz" in beeps[0].payload()


def test_no_beep_no_event_and_no_callback_is_fine() -> None:
    seen: list[ev.Event] = []
    screen = VoicemailScreen(VoicemailSettings(), "s1", seen.append)
    for f in frames(np.zeros(16 * 1000, dtype=np.int16)):
        screen.feed_frame(f)
    assert seen == []
    quiet = VoicemailScreen(VoicemailSettings())
    for f in frames(tone(1000, 400)):
        quiet.feed_frame(f)
    assert quiet.detector.beep is not None
