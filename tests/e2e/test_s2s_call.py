"""Speech-to-speech calls through the Plivo simulator and the real server, on a protocol-level
fake of the OpenAI Realtime API: a question answered in audio, a tool round trip, a barge-in
truncated where the caller stopped hearing, and a refused session handing the call to the
agent's cascaded providers (named, or the embedded defaults)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.e2e.cloud_fixtures import (
    AGENT_NUMBER,
    ANSWER,
    EL_HZ,
    GREETING,
    KEY_ENV,
    QUESTION,
    Rig,
    cloud_rig,
    heard,
)
from tests.fakes.fake_s2s import (
    GEMINI_PATH,
    Call,
    FakeGeminiLive,
    FakeOpenAIRealtime,
    Say,
    _S2SFake,
)

pytestmark = pytest.mark.slow

S2S_HZ = 233.0  # the Realtime fake's voice (a 233 Hz tone)
LONG = ("Let me tell you everything about our shop, from the history of the building to the "
        "names of every person who ever worked here, and then some more about the weather.")


def s2s_block(fake: _S2SFake) -> dict[str, Any]:
    key = {"env": KEY_ENV}
    if isinstance(fake, FakeGeminiLive):
        return {"provider": "gemini_live", "api_key": key, "base_url": fake.url + GEMINI_PATH}
    if isinstance(fake, FakeOpenAIRealtime) and fake.beta:
        return {"provider": "azure_openai", "api_key": key,
                "azure": {"endpoint": fake.url.replace("ws://", "http://"),
                          "deployment": "gpt-4o-realtime"}}
    return {"provider": "openai_realtime", "api_key": key, "base_url": fake.url + "/v1/realtime",
            "max_retries": 0}


@contextlib.asynccontextmanager
async def s2s_rig(settings_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
                  fake: _S2SFake, **extra: Any) -> AsyncIterator[Rig]:
    fake.vad_silence_ms = 600  # real speech has short pauses between words
    s2s = s2s_block(fake)
    async with cloud_rig(settings_factory, monkeypatch,
                         agent_overrides={"s2s": s2s, **extra}) as rig:
        yield rig


async def _greeted(rig: Rig, call: Any) -> None:
    await rig.wait_event(call, "agent.speech_completed")
    await rig.wait_quiet(call)


@pytest.mark.parametrize("vendor", ["openai_realtime", "azure_openai", "gemini_live"])
async def test_a_question_is_answered_in_audio(settings_factory, monkeypatch,
                                               vendor: str) -> None:
    fake: _S2SFake = (FakeGeminiLive(caller_text=QUESTION) if vendor == "gemini_live" else
                      FakeOpenAIRealtime(caller_text=QUESTION, beta=vendor == "azure_openai"))
    with fake:
        fake.replies.extend([Say(GREETING), Say(ANSWER)])
        async with s2s_rig(settings_factory, monkeypatch, fake) as rig:
            async with rig.call() as call:
                await _greeted(rig, call)
                q = await rig.ask(call)
                await rig.wait_event(call, "turn.completed", count=2, within_s=30)
                await rig.wait_quiet(call)
                rec = heard(call)
                span = rec.speech_after(q.speech_end)
                assert span is not None, "the caller heard no answer"
                assert abs(rec.dominant_hz(span[0], span[0] + 0.5) - S2S_HZ) < 20
                metrics = rig.of(call, "turn.metrics")
            session = await rig.end(call)
        assert fake.violations == []
    assert not [e for e in rig.of(call) if e["type"] in ("provider.fallback", "session.error")]
    turns = [(t["role"], t["text"]) for t in session["turns"]]
    assert ("user", QUESTION) in turns
    assert ("assistant", ANSWER) in turns
    # Gemini's protocol reports no end of the caller's speech to time a turn from.
    assert any(m.get("first_audio_out_ms") is not None for m in metrics) == \
        (vendor != "gemini_live")
    usage = {(u["provider"], u["metric"]) for u in session["usage"]}
    assert (vendor, "output_audio_tokens") in usage
    assert (vendor, "input_text_tokens") in usage


async def test_a_tool_call_goes_through_the_executor(settings_factory, monkeypatch) -> None:
    tools = [{"name": "press_keys", "builtin": "send_dtmf", "description": "Press keys"}]
    with FakeOpenAIRealtime(caller_text="Press five.") as fake:
        fake.replies.extend([Say(GREETING), Call("press_keys", {"digits": "5"}),
                             Say("I pressed five.")])
        async with s2s_rig(settings_factory, monkeypatch, fake, tools=tools) as rig:
            async with rig.call() as call:
                await _greeted(rig, call)
                await rig.ask(call, "Press five.")
                await rig.wait_event(call, "turn.completed", count=2, within_s=30,
                                     where=lambda d: d.get("agent_text") == "I pressed five."
                                     or d.get("agent_text") == GREETING)
            session = await rig.end(call)
        assert fake.violations == []
    called = rig.of(call, "tool.called")
    assert [(c["name"], c["arguments"]) for c in called] == [("press_keys", {"digits": "5"})]
    assert [c["status"] for c in session["tool_calls"]] == ["ok"]
    assert len(fake.tool_outputs) == 1
    call_id, output = fake.tool_outputs[0]
    assert call_id == called[0]["call_id"]
    assert "5" in output


async def test_barge_in_truncates_at_what_the_caller_heard(settings_factory,
                                                           monkeypatch) -> None:
    with FakeOpenAIRealtime(caller_text=QUESTION) as fake:
        fake.replies.extend([Say(LONG)])
        async with s2s_rig(settings_factory, monkeypatch, fake) as rig:
            async with rig.call() as call:
                # The greeting request is answered with a long reply; the caller talks over
                # it once it is being heard.
                await rig.wait_event(call, "agent.speech_started")
                await call.wait_for(lambda: heard(call).speech_after(0) is not None, 10)
                await rig.ask(call)
                interrupted = await rig.wait_event(call, "agent.speech_interrupted",
                                                   within_s=30)
                await fake.until(lambda: bool(fake.truncations), within_s=10)
                rec = heard(call)
                heard_ms = float(rec.loud().sum()) * 20
            session = await rig.end(call)
        assert fake.violations == []
    _item, audio_end_ms = fake.truncations[0]
    print(f"audio_end_ms {audio_end_ms} heard {heard_ms:.0f} ms")
    # What the model is told it said is what the caller's recording holds (20 ms windows,
    # plus the checkpoint granularity of the playout).
    assert abs(audio_end_ms - heard_ms) < 400, (audio_end_ms, heard_ms)
    assert audio_end_ms < len(LONG) * fake.ms_per_char
    assert interrupted[0]["heard_text"] and interrupted[0]["heard_text"] != LONG
    turns = [t for t in session["turns"] if t["role"] == "assistant"]
    assert turns and turns[0].get("interrupted") is True


async def test_a_refused_s2s_session_falls_back_to_the_cascade(settings_factory,
                                                               monkeypatch) -> None:
    with FakeOpenAIRealtime() as fake:
        fake.refuse_setup = "The model gpt-realtime does not exist."
        async with s2s_rig(settings_factory, monkeypatch, fake) as rig:
            async with rig.call() as call:
                await rig.wait_greeting(call)
                q = await rig.ask(call)
                await rig.wait_answered(call)
                rec = heard(call)
                span = rec.speech_after(q.speech_end)
                assert span is not None
                assert abs(rec.dominant_hz(span[0], span[0] + 0.5) - EL_HZ) < 20
            await rig.end(call)
    fallback = rig.of(call, "provider.fallback")
    assert fallback[0]["kind"] == "s2s"
    assert fallback[0]["to_provider"] == "cascaded"
    assert "does not exist" in fallback[0]["error"]


async def test_without_a_named_cascade_the_embedded_stack_takes_the_call(settings_factory,
                                                                        monkeypatch) -> None:
    with FakeOpenAIRealtime() as fake:
        fake.refuse_setup = "The model gpt-realtime does not exist."
        async with s2s_rig(settings_factory, monkeypatch, fake) as rig:
            # An agent naming only its s2s model: its stt/llm/tts are the embedded defaults.
            r = await rig.http.post("/v1/agents", json={
                "name": "s2s only", "prompt": "You are a test agent.", "greeting": GREETING,
                "s2s": {"provider": "openai_realtime", "api_key": {"env": KEY_ENV},
                        "base_url": fake.url + "/v1/realtime", "max_retries": 0}})
            assert r.status_code == 201, r.text
            r = await rig.http.put(f"/v1/numbers/{AGENT_NUMBER.replace('+', '%2B')}",
                                   json={"agent_id": r.json()["id"]})
            assert r.status_code in (200, 201), r.text
            async with rig.call() as call:
                await rig.wait_event(call, "agent.speech_completed", within_s=60,
                                     where=lambda d: d.get("text") == GREETING)
                assert heard(call).speech_after(0) is not None
    fallback = rig.of(call, "provider.fallback")
    assert [(f["kind"], f["to_provider"]) for f in fallback] == [("s2s", "cascaded")]


@pytest.mark.parametrize("vendor", ["openai_realtime", "gemini_live"])
async def test_phonebooth_turn_taking_answers_and_truncates_a_barge_in(
        settings_factory, monkeypatch, vendor: str) -> None:
    """turn_detection: phonebooth: the real Silero VAD and smart-turn model end the caller's
    turn and catch the barge-in; the vendor's VAD is off (the fakes run none)."""
    fake: _S2SFake = (FakeGeminiLive(caller_text=QUESTION) if vendor == "gemini_live" else
                      FakeOpenAIRealtime(caller_text=QUESTION))
    with fake:
        fake.replies.extend([Say(LONG), Say(ANSWER)])
        fake.chunk_delay_s = 0.05  # still generating the greeting when the caller cuts in
        async with s2s_rig(settings_factory, monkeypatch, fake) as rig:
            await _use_phonebooth_turns(rig, fake)
            async with rig.call() as call:
                await rig.wait_event(call, "agent.speech_started")
                await call.wait_for(lambda: heard(call).speech_after(0) is not None, 10)
                q = await rig.ask(call)
                interrupted = await rig.wait_event(call, "agent.speech_interrupted",
                                                   within_s=30)
                await rig.wait_event(call, "turn.completed", count=2, within_s=30)
                await rig.wait_quiet(call)
                rec = heard(call)
                span = rec.speech_after(q.speech_end)
                assert span is not None, "the caller heard no answer"
                assert abs(rec.dominant_hz(span[0], span[0] + 0.5) - S2S_HZ) < 20
            session = await rig.end(call)
        assert fake.violations == []
        signals = list(fake.turn_signals)
        truncations = list(fake.truncations)
        errors = list(fake.errors)
    assert not [e for e in rig.of(call) if e["type"] in ("provider.fallback", "session.error")]
    if vendor == "gemini_live":
        # activityStart cut the reply (the fake sends its transcript only with the last audio,
        # so nothing of it is known as heard).
        assert signals[:2] == ["activityStart", "activityEnd"], signals
        assert interrupted[0]["heard_text"] == ""
    else:
        assert interrupted[0]["heard_text"] and interrupted[0]["heard_text"] != LONG
        # Greeting, its cancel at the barge-in, then the caller's turn handed over.
        assert signals[:2] == ["response.create", "response.cancel"], signals
        assert signals[-2:] == ["input_audio_buffer.commit", "response.create"], signals
        assert errors == []
        assert len(truncations) == 1
        assert truncations[0][1] < len(LONG) * fake.ms_per_char
    done = rig.of(call, "user.turn_completed")
    assert [d["text"] for d in done] == [QUESTION]
    assert done[0]["trigger"] in ("model", "timeout", "vad")
    assert rig.of(call, "user.speech_started") and rig.of(call, "user.speech_stopped")
    # Timed from Phonebooth's end of turn, on Gemini as well.
    metrics = rig.of(call, "turn.metrics")
    assert any(m.get("first_audio_out_ms") is not None for m in metrics)
    turns = [(t["role"], t["text"]) for t in session["turns"]]
    assert ("user", QUESTION) in turns
    assert ("assistant", ANSWER) in turns
    cut = [t for t in session["turns"] if t["role"] == "assistant" and t.get("interrupted")]
    # A cut reply with no heard text leaves no assistant turn (Gemini's, above).
    assert len(cut) == (0 if vendor == "gemini_live" else 1)


async def _use_phonebooth_turns(rig: Rig, fake: _S2SFake) -> None:
    """Point the number at an agent like the rig's, with Phonebooth's turn-taking."""
    s2s = {**s2s_block(fake), "turn_detection": "phonebooth"}
    r = await rig.http.post("/v1/agents", json={
        "name": "s2s phonebooth turns", "prompt": "You are a test agent.", "greeting": GREETING,
        "s2s": s2s})
    assert r.status_code == 201, r.text
    r = await rig.http.put(f"/v1/numbers/{AGENT_NUMBER.replace('+', '%2B')}",
                           json={"agent_id": r.json()["id"]})
    assert r.status_code in (200, 201), r.text
