"""Hybrid speech-to-speech calls (`s2s.output: text`) through the Plivo simulator and the real
server: the model (a protocol-level fake of OpenAI Realtime, Azure's beta protocol or Gemini
Live) is asked for text only, and the agent's own TTS (the ElevenLabs fake, a 440 Hz voice)
speaks it through the cascade's speech output. The caller hears the TTS's voice, the turns
record the model's text and what was heard, and a barge-in stops the TTS mid-reply."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.cloud_fixtures import ANSWER, EL_HZ, GREETING, QUESTION, heard
from tests.e2e.test_s2s_call import LONG, S2S_HZ, s2s_block, s2s_rig
from tests.fakes.fake_s2s import FakeGeminiLive, FakeOpenAIRealtime, Say, _S2SFake

pytestmark = pytest.mark.slow

VENDORS = ["openai_realtime", "azure_openai", "gemini_live"]


def _fake(vendor: str) -> _S2SFake:
    if vendor == "gemini_live":
        return FakeGeminiLive(caller_text=QUESTION)
    return FakeOpenAIRealtime(caller_text=QUESTION, beta=vendor == "azure_openai")


def _text_block(fake: _S2SFake) -> dict[str, Any]:
    return {**s2s_block(fake), "output": "text"}


def _asked_for_text(vendor: str, fake: _S2SFake) -> bool:
    """What the session setup asked the vendor for, as the fake received it."""
    for rec in fake.for_endpoint("live" if vendor == "gemini_live" else "realtime"):
        for msg in rec.messages:
            if vendor == "gemini_live" and "setup" in msg:
                setup = msg["setup"]
                return bool(setup["generationConfig"]["responseModalities"] == ["TEXT"]
                            and "speechConfig" not in setup["generationConfig"])
            if msg.get("type") == "session.update":
                session = msg["session"]
                if vendor == "azure_openai":
                    return bool(session["modalities"] == ["text"])
                return bool(session["output_modalities"] == ["text"]
                            and "output" not in session["audio"])
    return False


@pytest.mark.parametrize("vendor", VENDORS)
async def test_the_models_text_is_spoken_by_the_agents_tts(settings_factory, monkeypatch,
                                                           vendor: str) -> None:
    fake = _fake(vendor)
    with fake:
        fake.replies.extend([Say(GREETING), Say(ANSWER)])
        async with s2s_rig(settings_factory, monkeypatch, fake, s2s=_text_block(fake)) as rig:
            async with rig.call() as call:
                await rig.wait_event(call, "agent.speech_completed")
                await rig.wait_quiet(call)
                q = await rig.ask(call)
                await rig.wait_event(call, "turn.completed", count=2, within_s=30)
                await rig.wait_quiet(call)
                rec = heard(call)
                span = rec.speech_after(q.speech_end)
                assert span is not None, "the caller heard no answer"
                # The agent's TTS voice, not the model's.
                assert abs(rec.dominant_hz(span[0], span[0] + 0.5) - EL_HZ) < 20
                assert rec.seconds_of(S2S_HZ, 0, span[1] + 1) == 0
            session = await rig.end(call)
        assert fake.violations == []
        assert fake.output == "text"
        assert _asked_for_text(vendor, fake)
    assert not [e for e in rig.of(call) if e["type"] in ("provider.fallback", "session.error")]
    completed = rig.of(call, "turn.completed")
    assert [(t["agent_text"], t["heard_text"], t["interrupted"]) for t in completed] == [
        (GREETING, GREETING, False), (ANSWER, ANSWER, False)]
    assert completed[1]["user_text"] == QUESTION
    turns = [(t["role"], t["text"]) for t in session["turns"]]
    assert ("user", QUESTION) in turns
    assert ("assistant", ANSWER) in turns
    metrics = rig.of(call, "turn.metrics")
    if vendor != "gemini_live":  # Gemini reports no end of the caller's speech to time from
        timed = [m for m in metrics if m.get("first_audio_out_ms") is not None]
        assert timed and timed[0]["tts_ttfb_ms"] is not None
    usage = {(u["provider"], u["metric"]) for u in session["usage"]}
    assert (vendor, "output_text_tokens") in usage
    assert (vendor, "output_audio_tokens") not in usage


@pytest.mark.parametrize("vendor", VENDORS)
async def test_barge_in_stops_the_tts_and_records_what_was_heard(settings_factory, monkeypatch,
                                                                 vendor: str) -> None:
    fake = _fake(vendor)
    with fake:
        fake.replies.extend([Say(LONG), Say(ANSWER)])
        async with s2s_rig(settings_factory, monkeypatch, fake, s2s=_text_block(fake)) as rig:
            async with rig.call() as call:
                # The greeting is a long reply; the caller talks over it once it is heard.
                await rig.wait_event(call, "agent.speech_started")
                await call.wait_for(lambda: heard(call).speech_after(0) is not None, 10)
                q = await rig.ask(call)
                interrupted = await rig.wait_event(call, "agent.speech_interrupted",
                                                   within_s=30)
                cut_at = time.monotonic()
                await rig.wait_event(call, "turn.completed", count=2, within_s=30)
                await rig.wait_quiet(call)
                rec = heard(call)
            session = await rig.end(call)
        assert fake.violations == []
        edits = list(fake.text_edits)
        errors = list(fake.errors)
    heard_text = interrupted[0]["heard_text"]
    print(f"heard {heard_text!r}, cut {q.speech_end - cut_at:.2f}s before the question's end")
    assert heard_text and heard_text != LONG and LONG.startswith(heard_text)
    assert interrupted[0]["interrupted_text"] == LONG
    # The TTS stopped: from shortly after the cut until the caller's question ends (the
    # reply would have played on for seconds), the caller hears none of the agent's voice.
    assert q.speech_end > cut_at + 0.5, "the cut came too late to tell"
    assert rec.seconds_of(EL_HZ, cut_at + 0.3, q.speech_end) == 0
    answer = rec.speech_after(q.speech_end)
    assert answer is not None and abs(rec.dominant_hz(answer[0], answer[0] + 0.5) - EL_HZ) < 20
    completed = rig.of(call, "turn.completed")
    assert (completed[0]["agent_text"], completed[0]["heard_text"],
            completed[0]["interrupted"]) == (LONG, heard_text, True)
    assert completed[1]["agent_text"] == ANSWER
    cut = [t for t in session["turns"] if t["role"] == "assistant" and t.get("interrupted")]
    assert len(cut) == 1
    if vendor == "gemini_live":
        assert edits == []  # the Live API cannot edit its history
    else:
        # The model's text item is replaced by what the caller heard.
        assert len(edits) == 1 and edits[0][1] == heard_text, edits
        assert errors == []
