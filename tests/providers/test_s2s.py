"""Speech-to-speech adapters against protocol-level fakes of OpenAI Realtime (GA), Azure OpenAI
Realtime (beta events) and Gemini Live: every client message is checked against the vendor's
schema by the fake (`fake.violations` stays empty)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from pipelines import events as ev
from pipelines.s2s.conversation import S2SConversation, TurnTaking
from pipelines.settings import TurnSettings, VadSettings
from providers import registry
from providers.base import ProviderContext, ProviderError, ToolCall, ToolSpec, Usage
from providers.s2s.base import (
    AudioOut,
    InputTranscript,
    Interrupted,
    OutputText,
    OutputTranscript,
    ResponseDone,
    S2SEvent,
    S2SProvider,
    S2SSession,
    SpeechStarted,
    TextDone,
)
from tests.fakes.fake_s2s import Call, FakeGeminiLive, FakeOpenAIRealtime, Say, _S2SFake
from tests.fakes.harness import Collected, context
from tests.fakes.vendor_base import FAKE_API_KEY, tone
from tests.pipelines.fakes import EnergyVad, FakePlayoutSink, ScriptedEndpointing

KEY = {"env": "FAKE_VENDOR_KEY"}
WEATHER = ToolSpec("get_weather", "Weather for a city",
                   {"type": "object", "properties": {"city": {"type": "string"}}})


def _options(name: str, fake: _S2SFake) -> dict[str, Any]:
    if name == "azure_openai":
        return {"api_key": KEY, "azure": {"endpoint": fake.url.replace("ws://", "http://"),
                                          "deployment": "gpt-4o-realtime"}}
    return {"api_key": KEY, "base_url": fake.url + ("/v1/realtime" if name == "openai_realtime"
                                                    else "/ws/google.ai.generativelanguage."
                                                    "v1beta.GenerativeService."
                                                    "BidiGenerateContent")}


def _fake(name: str) -> _S2SFake:
    if name == "gemini_live":
        return FakeGeminiLive()
    return FakeOpenAIRealtime(beta=name == "azure_openai")


@pytest.fixture(params=["openai_realtime", "azure_openai", "gemini_live"])
async def vendor(request: pytest.FixtureRequest
                 ) -> AsyncIterator[tuple[str, _S2SFake, S2SProvider, Collected]]:
    name = request.param
    with _fake(name) as fake:
        async with context() as (ctx, got):
            cls = registry.get("s2s", name)
            provider = cls(cls.Config.model_validate(_options(name, fake)), ctx)
            assert isinstance(provider, S2SProvider)
            yield name, fake, provider, got
            assert fake.violations == []


async def _until(session: S2SSession, seen: list[S2SEvent],
                 done: Callable[[list[S2SEvent]], bool], within_s: float = 10.0) -> None:
    async def pump() -> None:
        async for e in session.events():
            seen.append(e)
            if done(seen):
                return
        raise AssertionError(f"session ended before the condition: {seen}")

    await asyncio.wait_for(pump(), within_s)


async def _speak(session: S2SSession, rate: int, speech_ms: int = 400,
                 silence_ms: int = 500) -> None:
    pcm = np.concatenate([tone(rate * speech_ms // 1000, rate),
                          np.zeros(rate * silence_ms // 1000, dtype=np.int16)])
    step = rate // 50
    for i in range(0, len(pcm), step):
        await session.send_audio(pcm[i:i + step])


def _audio_ms(events: list[S2SEvent], rate: int) -> float:
    return sum(len(e.samples) for e in events if isinstance(e, AudioOut)) * 1000 / rate


async def test_greeting_and_a_caller_turn_are_answered_in_audio(vendor: Any) -> None:
    name, fake, provider, _got = vendor
    session = await provider.connect("You are a helpful agent.", [WEATHER])
    try:
        seen: list[S2SEvent] = []
        await session.respond("Greet the caller.")
        await _until(session, seen, lambda s: isinstance(s[-1], ResponseDone))
        # 60 ms per character of "I heard you."
        assert _audio_ms(seen, provider.output_rate) == pytest.approx(720, abs=30)
        seen.clear()
        await _speak(session, provider.input_rate)
        await _until(session, seen, lambda s: isinstance(s[-1], ResponseDone))
        assert [e.text for e in seen if isinstance(e, InputTranscript)] == ["Hello there."]
        said = "".join(e.text for e in seen if isinstance(e, OutputTranscript))
        assert said == "I heard you."
        assert _audio_ms(seen, provider.output_rate) > 0
        usage = [e for e in seen if isinstance(e, Usage)]
        assert {u.metric for u in usage} >= {"input_text_tokens", "input_audio_tokens",
                                             "output_audio_tokens"}
        if name != "gemini_live":
            assert any(isinstance(e, SpeechStarted) for e in seen)
    finally:
        await session.aclose()
    setup = fake.requests[0].json_messages()[0]
    if name == "gemini_live":
        assert setup["setup"]["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
    else:
        assert setup["type"] == "session.update"
        assert "get_weather" in str(setup["session"]["tools"])


async def test_a_function_call_round_trip(vendor: Any) -> None:
    _name, fake, provider, _got = vendor
    fake.replies.extend([Call("get_weather", {"city": "Paris"}), Say("It is sunny.")])
    session = await provider.connect("You are a helpful agent.", [WEATHER])
    try:
        seen: list[S2SEvent] = []
        await _speak(session, provider.input_rate)
        await _until(session, seen, lambda s: isinstance(s[-1], ToolCall))
        call = seen[-1]
        assert isinstance(call, ToolCall)
        assert (call.name, call.arguments) == ("get_weather", {"city": "Paris"})
        await session.send_tool_result(call, '{"forecast": "sunny"}')
        seen.clear()
        await _until(session, seen, lambda s: isinstance(s[-1], ResponseDone)
                     and any(isinstance(e, AudioOut) for e in s))
        assert "".join(e.text for e in seen if isinstance(e, OutputTranscript)) == \
            "It is sunny."
    finally:
        await session.aclose()
    assert len(fake.tool_outputs) == 1
    assert fake.tool_outputs[0][0] == call.id
    assert "sunny" in str(fake.tool_outputs[0][1])


async def test_barge_in_truncates_at_the_heard_position(vendor: Any) -> None:
    name, fake, provider, _got = vendor
    fake.replies.append(Say("A long answer that the caller will not wait for at all."))
    fake.chunk_delay_s = 0.05
    session = await provider.connect("You are a helpful agent.", [])
    try:
        seen: list[S2SEvent] = []
        await session.respond("Greet the caller.")
        await _until(session, seen, lambda s: _audio_ms(s, provider.output_rate) >= 500)
        item = next(e.item_id for e in seen if isinstance(e, AudioOut))
        await _speak(session, provider.input_rate, silence_ms=0)
        if name == "gemini_live":
            await _until(session, seen, lambda s: isinstance(s[-1], Interrupted))
        else:
            await _until(session, seen, lambda s: isinstance(s[-1], SpeechStarted))
            await session.truncate(item, 300)
            await fake.until(lambda: bool(fake.truncations), within_s=10)
            assert fake.truncations == [(item, 300)]
    finally:
        await session.aclose()


def _text_provider(name: str, fake: _S2SFake, ctx: ProviderContext) -> S2SProvider:
    cls = registry.get("s2s", name)
    provider = cls(cls.Config.model_validate({**_options(name, fake), "output": "text"}), ctx)
    assert isinstance(provider, S2SProvider)
    return provider


@pytest.mark.parametrize("name", ["openai_realtime", "azure_openai", "gemini_live"])
async def test_text_output_asks_for_text_and_reads_it(name: str) -> None:
    """output: text: the setup asks for text only and the reply arrives as text deltas (GA
    `response.output_text.*`, beta `response.text.*`, Gemini `modelTurn.parts[].text`)."""
    ctx, _got = _ctx()
    with _fake(name) as fake:
        session = await _text_provider(name, fake, ctx).connect("Be brief.", [])
        try:
            seen: list[S2SEvent] = []
            await session.respond("Greet the caller.")
            await _until(session, seen, lambda s: isinstance(s[-1], ResponseDone))
            assert not [e for e in seen if isinstance(e, AudioOut | OutputTranscript)]
            assert "".join(e.text for e in seen if isinstance(e, OutputText)) == "I heard you."
            items = {e.item_id for e in seen if isinstance(e, OutputText)}
            assert len(items) == 1
            # OpenAI marks the end of the item's text; Gemini only the end of the turn.
            assert [e.item_id for e in seen if isinstance(e, TextDone)] == (
                [] if name == "gemini_live" else list(items))
            usage = {u.metric for u in seen if isinstance(u, Usage)}
            assert "output_text_tokens" in usage and "output_audio_tokens" not in usage
        finally:
            await session.aclose()
        assert fake.violations == []
        assert fake.output == "text"


@pytest.mark.parametrize("name", ["openai_realtime", "azure_openai"])
async def test_a_cut_text_reply_is_replaced_by_the_heard_text(name: str) -> None:
    """conversation.item.truncate cuts audio only: a text item is deleted and an assistant
    message with the heard words takes its place."""
    ctx, _got = _ctx()
    with _fake(name) as fake:
        session = await _text_provider(name, fake, ctx).connect("Be brief.", [])
        try:
            seen: list[S2SEvent] = []
            await session.respond("Greet the caller.")
            await _until(session, seen, lambda s: isinstance(s[-1], ResponseDone))
            item = next(e.item_id for e in seen if isinstance(e, OutputText))
            await session.keep_heard_text(item, "I heard")
            await fake.until(lambda: bool(fake.text_edits) and fake.text_edits[-1][1] != "",
                             within_s=5)
        finally:
            await session.aclose()
        assert fake.text_edits == [(item, "I heard")]
        assert fake.violations == [] and fake.errors == []


async def test_gemini_text_output_takes_the_callers_first_words_as_their_start() -> None:
    """The model finishes writing long before the TTS has spoken it, so Gemini's server VAD has
    nothing to interrupt: the first input transcription of a turn is the caller's start."""
    ctx, _got = _ctx()
    with FakeGeminiLive() as fake:
        provider = _text_provider("gemini_live", fake, ctx)
        session = await provider.connect("Be brief.", [])
        try:
            seen: list[S2SEvent] = []
            await session.respond("Greet the caller.")
            await _until(session, seen, lambda s: isinstance(s[-1], ResponseDone))
            seen.clear()
            await _speak(session, provider.input_rate)
            await _until(session, seen, lambda s: isinstance(s[-1], ResponseDone))
        finally:
            await session.aclose()
        assert fake.violations == []
    kinds = [e.kind for e in seen]
    assert kinds.count("speech_started") == 1
    assert kinds.index("speech_started") < kinds.index("input_transcript")
    assert [e.text for e in seen if isinstance(e, InputTranscript)] == ["Hello there."]


async def test_a_refused_setup_is_a_provider_error(vendor: Any) -> None:
    _name, fake, provider, _got = vendor
    fake.refuse_setup = "model not available"
    with pytest.raises(ProviderError) as info:
        await asyncio.wait_for(provider.connect("x", []), 10)
    assert "model not available" in str(info.value)


async def test_a_wrong_key_fails_without_leaking_it() -> None:
    with FakeOpenAIRealtime(api_key="sk-other-key-0000000000") as fake:
        ctx, _ = _ctx()
        cls = registry.get("s2s", "openai_realtime")
        provider = cls(cls.Config.model_validate(
            {"api_key": KEY, "base_url": fake.url + "/v1/realtime", "max_retries": 0}), ctx)
        assert isinstance(provider, S2SProvider)
        with pytest.raises(ProviderError) as info:
            await provider.connect("x", [])
    assert info.value.status == 401
    assert FAKE_API_KEY not in str(info.value)


def _ctx() -> tuple[ProviderContext, Collected]:
    from tests.fakes.harness import make_context

    return make_context()


# -- turn_detection: phonebooth: the client ends turns, the vendor's VAD is off ---------------
def _phonebooth(name: str, fake: _S2SFake, ctx: ProviderContext) -> S2SProvider:
    cls = registry.get("s2s", name)
    provider = cls(cls.Config.model_validate(
        {**_options(name, fake), "turn_detection": "phonebooth"}), ctx)
    assert isinstance(provider, S2SProvider)
    return provider


async def _quiet_for(session: S2SSession, seen: list[S2SEvent], seconds: float) -> None:
    """Collect events for `seconds` (nothing is expected to end the wait)."""
    async def pump() -> None:
        async for e in session.events():
            seen.append(e)

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(pump(), seconds)


@pytest.mark.parametrize("name", ["openai_realtime", "azure_openai"])
async def test_phonebooth_turns_commit_the_buffer_and_ask_for_the_reply(name: str) -> None:
    with _fake(name) as fake:
        async with context() as (ctx, _got):
            provider = _phonebooth(name, fake, ctx)
            session = await provider.connect("You are a helpful agent.", [])
            try:
                seen: list[S2SEvent] = []
                await session.activity_start()
                await _speak(session, provider.input_rate)
                # The vendor's VAD is off: speech alone neither starts nor ends a turn.
                await _quiet_for(session, seen, 0.8)
                assert not [e for e in seen if isinstance(e, SpeechStarted | AudioOut)]
                assert fake.turn_signals == []
                await session.activity_end()
                await _until(session, seen, lambda s: isinstance(s[-1], ResponseDone))
                assert [e.text for e in seen if isinstance(e, InputTranscript)] == \
                    ["Hello there."]
                assert "".join(e.text for e in seen if isinstance(e, OutputTranscript)) == \
                    "I heard you."
            finally:
                await session.aclose()
            setup = fake.requests[0].json_messages()[0]["session"]
            vad = setup["turn_detection"] if name == "azure_openai" else \
                setup["audio"]["input"]["turn_detection"]
            assert vad is None
            assert fake.turn_signals == ["input_audio_buffer.commit", "response.create"]
            assert fake.violations == [] and fake.errors == []


@pytest.mark.parametrize("name", ["openai_realtime", "azure_openai"])
async def test_phonebooth_barge_in_cancels_and_truncates(name: str) -> None:
    with _fake(name) as fake:
        fake.replies.append(Say("A long answer that the caller will not wait for at all."))
        fake.chunk_delay_s = 0.05
        async with context() as (ctx, _got):
            provider = _phonebooth(name, fake, ctx)
            session = await provider.connect("You are a helpful agent.", [])
            try:
                seen: list[S2SEvent] = []
                await session.respond("Greet the caller.")
                await _until(session, seen,
                             lambda s: _audio_ms(s, provider.output_rate) >= 500)
                item = next(e.item_id for e in seen if isinstance(e, AudioOut))
                await session.activity_start()
                await session.cancel_response()
                await session.truncate(item, 300)
                await _until(session, seen, lambda s: isinstance(s[-1], ResponseDone))
                done = seen[-1]
                assert isinstance(done, ResponseDone) and done.status == "cancelled"
                await fake.until(lambda: bool(fake.truncations), within_s=10)
                # A cancel with nothing in progress is refused, and the session goes on.
                await session.cancel_response()
                await fake.until(lambda: bool(fake.errors), within_s=10)
            finally:
                await session.aclose()
            assert fake.truncations == [(item, 300)]
            assert fake.turn_signals == ["response.create", "response.cancel",
                                         "response.cancel"]
            assert fake.errors == ["response_cancel_not_active"]
            assert fake.violations == []


async def test_phonebooth_gemini_marks_activity_and_keeps_the_preroll() -> None:
    with FakeGeminiLive() as fake:
        async with context() as (ctx, _got):
            provider = _phonebooth("gemini_live", fake, ctx)
            session = await provider.connect("You are a helpful agent.", [])
            try:
                seen: list[S2SEvent] = []
                # Speech before activityStart (what the VAD needed to confirm it) is held
                # back and sent right after it; the rest of the turn is silence.
                pcm = tone(provider.input_rate * 300 // 1000, provider.input_rate)
                step = provider.input_rate // 50
                for i in range(0, len(pcm), step):
                    await session.send_audio(pcm[i:i + step])
                await _quiet_for(session, seen, 0.5)
                assert fake.turn_signals == [] and not seen
                await session.activity_start()
                await session.send_audio(np.zeros(provider.input_rate // 2, dtype=np.int16))
                await session.activity_end()
                await _until(session, seen, lambda s: isinstance(s[-1], ResponseDone))
                assert [e.text for e in seen if isinstance(e, InputTranscript)] == \
                    ["Hello there."]
                assert _audio_ms(seen, provider.output_rate) > 0
            finally:
                await session.aclose()
        setup = fake.requests[0].json_messages()[0]["setup"]
        assert setup["realtimeInputConfig"] == {"automaticActivityDetection": {"disabled": True}}
        assert fake.turn_signals == ["activityStart", "activityEnd"]
        assert fake.violations == []


async def test_phonebooth_gemini_activity_start_interrupts_the_reply() -> None:
    with FakeGeminiLive() as fake:
        fake.replies.extend([Say("A long answer that the caller will not wait for at all."),
                             Say("Sure.")])
        fake.chunk_delay_s = 0.05
        async with context() as (ctx, _got):
            provider = _phonebooth("gemini_live", fake, ctx)
            session = await provider.connect("You are a helpful agent.", [])
            try:
                seen: list[S2SEvent] = []
                await session.respond("Greet the caller.")
                await _until(session, seen,
                             lambda s: _audio_ms(s, provider.output_rate) >= 500)
                cut = next(e.item_id for e in seen if isinstance(e, AudioOut))
                await session.activity_start()
                await session.cancel_response()  # nothing to send: activityStart did it
                await _until(session, seen, lambda s: isinstance(s[-1], Interrupted))
                seen.clear()
                await _speak(session, provider.input_rate)
                await session.activity_end()
                await _until(session, seen, lambda s: isinstance(s[-1], ResponseDone))
                # The answer is a new item: the host drops late audio of the cut one.
                assert {e.item_id for e in seen if isinstance(e, AudioOut)} - {cut}
                assert cut not in {e.item_id for e in seen if isinstance(e, AudioOut)}
            finally:
                await session.aclose()
        assert fake.turn_signals == ["activityStart", "activityEnd"]
        assert fake.violations == []


# -- S2SConversation with Phonebooth's turn-taking, on the OpenAI fake -------------------------
async def _frames(conv: S2SConversation, pattern: list[tuple[bool, int]]) -> None:
    """Real-time 20 ms caller frames: (voiced, ms) runs; the scripted VAD hears any non-zero
    sample as speech."""
    voice = tone(320, 16000)
    quiet = np.zeros(320, dtype=np.int16)
    for voiced, ms in pattern:
        for _ in range(ms // 20):
            await conv.push_audio(voice if voiced else quiet)
            await asyncio.sleep(0.02)


async def test_phonebooth_conversation_commits_only_when_the_turn_is_over() -> None:
    with FakeOpenAIRealtime() as fake:
        async with context() as (ctx, _got):
            provider = _phonebooth("openai_realtime", fake, ctx)
            session = await provider.connect("You are a helpful agent.", [])
            vad = EnergyVad(VadSettings())
            # The first pause sounds unfinished (P 0.1: the budget runs, the caller goes
            # on); the second is the end of the turn (P 0.9).
            endpointing = ScriptedEndpointing(TurnSettings(), [[0.1], [0.9]])
            sink = FakePlayoutSink()
            events: list[ev.Event] = []
            conv = S2SConversation(session, input_rate=provider.input_rate,
                                   output_rate=provider.output_rate, sink=sink,
                                   on_event=events.append,
                                   turn_taking=TurnTaking(vad, endpointing))
            await conv.start()
            try:
                await _frames(conv, [(True, 400), (False, 300), (True, 300), (False, 600)])
                await fake.until(lambda: len(fake.turn_signals) == 2, within_s=5)
                await _frames(conv, [(False, 200)])
                await fake.until(lambda: any(isinstance(e, ev.TurnCompleted) for e in events),
                                 within_s=10)
            finally:
                await conv.stop()
                await conv.wait_ended()
                await sink.aclose()
    assert endpointing.calls == 2 and endpointing.cancelled == 1
    assert fake.turn_signals == ["input_audio_buffer.commit", "response.create"]
    assert fake.violations == [] and fake.errors == []
    kinds = [type(e).__name__ for e in events]
    assert kinds.count("UserSpeechStarted") == 2 and kinds.count("UserSpeechStopped") == 2
    done = [e for e in events if isinstance(e, ev.UserTurnCompleted)]
    assert [(d.text, d.trigger, d.eou_probability) for d in done] == \
        [("Hello there.", "model", 0.9)]
    metrics = [e for e in events if isinstance(e, ev.TurnMetrics)]
    assert len(metrics) == 1
    assert metrics[0].first_audio_out_ms is not None
    assert metrics[0].vad_stop_to_eou_ms is not None
    turn = next(e for e in events if isinstance(e, ev.TurnCompleted))
    assert (turn.user_text, turn.agent_text, turn.interrupted) == \
        ("Hello there.", "I heard you.", False)
    assert vad.closed
