"""Beep detection and the human/machine classifier on synthetic and synthesised audio."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.audio.beep import BeepDetector
from pipelines.audio.g711 import ulaw_decode, ulaw_encode
from pipelines.audio.resample import resample
from pipelines.voicemail import VoicemailDetector, machine_phrase
from tests.speech import frames, synthesize


def tone(hz: float, ms: float, amplitude: int = 8000, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(rate * ms / 1000)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def beeps_in(audio: np.ndarray, **kw) -> list:
    det = BeepDetector(**kw)
    return [b for f in frames(audio) if (b := det.push(f)) is not None]


@pytest.mark.parametrize("hz", [850.0, 1000.0, 1400.0, 1950.0])
def test_steady_tones_in_band_are_beeps(hz: float) -> None:
    audio = np.concatenate([np.zeros(3200, np.int16), tone(hz, 400), np.zeros(3200, np.int16)])
    found = beeps_in(audio)
    assert len(found) == 1
    assert abs(found[0].frequency_hz - hz) < 25
    assert 180 <= found[0].start_ms <= 220 and found[0].duration_ms >= 150


def test_short_quiet_or_out_of_band_tones_are_not_beeps() -> None:
    assert beeps_in(tone(1000, 100)) == []  # too short
    assert beeps_in(tone(1000, 400, amplitude=100)) == []  # too quiet
    assert beeps_in(tone(440, 400)) == []  # below the band
    assert beeps_in(tone(3000, 400)) == []  # above the band
    rng = np.random.default_rng(7)
    assert beeps_in((rng.standard_normal(16000) * 3000).astype(np.int16)) == []


def test_speech_is_not_a_beep_but_a_phone_line_beep_is() -> None:
    speech = synthesize("Hi, you have reached Sam. Please leave a message after the tone.")
    assert beeps_in(speech) == []
    # Through a μ-law 8 kHz phone leg and back, as the caller's audio reaches the engine.
    line = ulaw_decode(ulaw_encode(resample(tone(1000, 300), 16000, 8000)))
    assert len(beeps_in(resample(line, 8000, 16000))) == 1


def test_machine_phrases() -> None:
    assert machine_phrase("Sorry, I'm not available right now.") == "not available"
    assert machine_phrase("Please leave a message after the tone") is not None
    assert machine_phrase("You've reached the voice mail of Sam") == "voicemail"
    assert machine_phrase("Hello? Who is this?") is None
    assert machine_phrase("I can leave at five") is None


def run(det: VoicemailDetector, ms: float, *, audio: np.ndarray | None = None):
    """Push `ms` of silence (or `audio`) in 20 ms frames; returns the first verdict."""
    src = audio if audio is not None else np.zeros(int(16 * ms), np.int16)
    verdict = None
    for f in frames(src):
        v = det.push_audio(f)
        verdict = verdict or v
    return verdict


def test_a_short_hello_then_silence_is_a_person() -> None:
    det = VoicemailDetector()
    assert run(det, 300) is None
    det.speech_started()
    assert run(det, 700) is None
    assert det.speech_stopped() is None
    det.add_transcript("Hello?", is_final=True)
    v = run(det, 1000)
    assert v is not None and (v.result, v.method) == ("human", "silence")
    assert 1750 <= v.at_ms <= 1850 and not det.ready_for_message


def test_a_missing_final_delays_the_human_verdict_by_the_grace() -> None:
    det = VoicemailDetector()
    det.speech_started()
    run(det, 600)
    det.speech_stopped()
    v = run(det, 3000)
    assert v is not None and v.result == "human" and v.at_ms >= 600 + 800 + 1000 - 20


def test_recorded_greetings_are_machines() -> None:
    det = VoicemailDetector()
    det.speech_started()
    run(det, 1200)
    assert det.add_transcript("Hi, I am not", is_final=False) is None
    v = det.add_transcript("Hi, I am not available", is_final=False)
    assert v is not None and (v.result, v.method, v.detail) == (
        "machine", "transcript", "not available")

    det = VoicemailDetector()
    det.speech_started()
    run(det, 2500)
    det.speech_stopped()
    run(det, 300)  # a breath, not a pause: the same greeting
    det.speech_started()
    v = run(det, 1600)
    assert v is not None and (v.result, v.method) == ("machine", "greeting_length")

    det = VoicemailDetector()
    v = run(det, 0, audio=np.concatenate([np.zeros(8000, np.int16), tone(1000, 300)]))
    assert v is not None and (v.result, v.method) == ("machine", "beep")
    assert not det.ready_for_message  # the beep is still sounding
    run(det, 40)
    assert det.ready_for_message


def test_silence_is_a_person_at_the_timeout() -> None:
    det = VoicemailDetector(timeout_ms=3000)
    v = run(det, 3100)
    assert v is not None and (v.result, v.method) == ("human", "timeout")


def test_the_message_waits_for_the_beep_or_the_end_of_the_greeting() -> None:
    det = VoicemailDetector()
    det.speech_started()
    run(det, 1000)
    det.add_transcript("please leave a message", is_final=False)
    assert det.verdict is not None and not det.ready_for_message
    run(det, 1000)
    det.speech_stopped()
    run(det, 500)
    assert not det.ready_for_message
    run(det, 0, audio=tone(1000, 200))
    assert det.beep is not None and not det.ready_for_message
    run(det, 40)
    assert det.ready_for_message

    det = VoicemailDetector()  # a machine without a beep
    det.speech_started()
    det.add_transcript("I'm away from the phone", is_final=True)
    run(det, 1000)
    det.speech_stopped()
    run(det, 1000)
    assert not det.ready_for_message
    run(det, 600)
    assert det.ready_for_message
