"""The call never goes silent without an event: idle re-prompts, the response watchdog,
provider failures, the maximum call duration."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.settings import ConversationSettings, IdleSettings
from providers.base import ProviderError
from tests.pipelines.fakes import Fail, FakeLLM, FakeSTT, FakeTTS, Hang, start_call
from tests.pipelines.virtual_clock import run_virtual


def test_idle_reprompts_twice_then_says_goodbye_and_ends() -> None:
    async def scenario() -> None:
        idle = IdleSettings(timeout_s=5, max_prompts=2, prompt="Are you still there?",
                            goodbye="Goodbye for now!")
        h = await start_call(ConversationSettings(idle=idle), greeting="Hello!")
        reason = await h.conv.wait_ended()
        assert reason == "idle"
        assert h.tts.requests == ["Hello!", "Are you still there?", "Are you still there?",
                                  "Goodbye for now!"]
        assert [e.prompts_sent for e in h.of("user.idle")] == [1, 2, 2]
        # Each prompt comes timeout_s after the agent finished the previous speech.
        completed = [e.mono for e in h.of("agent.speech_completed")]
        idles = [e.mono for e in h.of("user.idle")]
        for done_at, idle_at in zip(completed, idles, strict=False):
            assert idle_at - done_at == pytest.approx(5.0, abs=0.05)
        assert all(h.sink.fully_played(s) for s in h.sink.segments)  # goodbye heard in full
        assert h.states()[-1] == "ending"
        await h.close()

    run_virtual(scenario())


def test_caller_speech_resets_the_idle_count() -> None:
    async def scenario() -> None:
        idle = IdleSettings(timeout_s=4, max_prompts=1)
        h = await start_call(ConversationSettings(idle=idle), utterances=["Yes, I'm here."],
                             llm_scripts=[["Great."]])
        await h.wait_for("user.idle")
        await h.wait_for("agent.speech_completed")
        await h.caller.pause(1000)
        await h.caller.speak(800)
        await h.wait_for("turn.completed")
        # After a real turn the count starts over: one more prompt before the goodbye.
        assert await h.conv.wait_ended() == "idle"
        assert [e.prompts_sent for e in h.of("user.idle")] == [1, 1, 1]
        await h.close()

    run_virtual(scenario())


def test_watchdog_apologises_when_the_llm_hangs() -> None:
    async def scenario() -> None:
        s = ConversationSettings(response_timeout_s=2.0)
        llm = FakeLLM([[Hang()], ["Sure, we are open until ten."]])
        h = await start_call(s, utterances=["Are you open late?", "Are you open late?"],
                             llm=llm)
        await h.caller.speak(900)
        turn = await h.wait_for("user.turn_completed")
        err = await h.wait_for("session.error")
        assert err.stage == "watchdog" and err.code == "response_timeout"
        assert err.mono - turn.mono == pytest.approx(2.0, abs=0.05)
        apology = await h.wait_for("agent.speech_started")
        assert apology.text == "Sorry, I'm having trouble right now."
        assert apology.mono - err.mono < 0.2
        assert llm.cancelled == 1
        await h.wait_for("agent.state_changed", lambda e: e.new_state == "listening", count=2)
        # The caller tries again and gets an answer.
        await h.caller.speak(900)
        done = await h.wait_for("turn.completed", count=2)
        assert done.agent_text == "Sure, we are open until ten."
        msgs = llm.requests[-1]["messages"]
        assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
        assert msgs[2]["content"].startswith("Sorry, I'm having trouble right now.")
        first = h.of("turn.completed")[0]
        assert first.agent_text == "" and first.heard_text == ""
        await h.close()

    run_virtual(scenario())


def test_llm_failure_reports_an_error_and_apologises() -> None:
    async def scenario() -> None:
        h = await start_call(
            utterances=["Hi there"],
            llm_scripts=[["Let me ", Fail(ProviderError("openai", "boom", code="overloaded"))]],
        )
        await h.caller.speak(800)
        err = await h.wait_for("session.error")
        assert err.stage == "llm" and err.code == "overloaded" and "boom" in err.message
        apology = await h.wait_for("agent.speech_started")
        assert apology.text.startswith("Sorry")
        await h.close()

    run_virtual(scenario())


def test_tts_failure_reports_an_error_and_never_loops() -> None:
    async def scenario() -> None:
        # The TTS fails on every text. An apology through it would only fail again: the agent
        # cannot talk any more, so the call ends, explaining why (no pre-rendered line here).
        tts = FakeTTS(fail_on="")
        h = await start_call(utterances=["Hello?"], llm_scripts=[["Hi, how can I help?"]],
                             tts=tts)
        await h.caller.speak(800)
        assert await h.conv.wait_ended() == "provider_error"
        errors = h.of("session.error")
        assert [(e.stage, e.code) for e in errors] == [("tts", "ProviderError"),
                                                       ("tts", "providers_exhausted")]
        assert tts.requests == ["Hi, how can I help?"]
        await h.close()

    run_virtual(scenario())


def test_tts_down_plays_the_prerendered_goodbye_then_ends() -> None:
    async def scenario() -> None:
        tts = FakeTTS(fail_on="")
        clip = (np.full(16000, 3000, np.int16), 16000)  # 1 s, as the host would have rendered
        s = ConversationSettings(failure_goodbye="Sorry, technical trouble. Goodbye.")
        h = await start_call(s, utterances=["Hello?"], llm_scripts=[["Hi, how can I help?"]],
                             tts=tts, failure_clip=lambda: clip)
        await h.caller.speak(800)
        assert await h.conv.wait_ended() == "provider_error"
        goodbye = h.of("agent.speech_started")[-1]
        assert goodbye.text == "Sorry, technical trouble. Goodbye."
        assert tts.requests == ["Hi, how can I help?"]  # the clip needed no TTS
        assert h.sink.fully_played(h.sink.segments[-1])  # heard in full before the hangup
        await h.close()

    run_virtual(scenario())


def test_answers_lost_in_a_row_end_the_call_with_a_goodbye() -> None:
    async def scenario() -> None:
        boom = ProviderError("openai", "boom", code="overloaded")
        s = ConversationSettings(max_failed_replies=2, failure_goodbye="Please call back later.")
        h = await start_call(s, utterances=["Hi there", "Hello?", "Hello??"],
                             llm_scripts=[["Sure."], [Fail(boom)], [Fail(boom)]])
        await h.caller.speak(800)
        await h.wait_for("turn.completed")
        # A working answer in between resets the count: two failures in a row are needed.
        await h.caller.pause(1500)
        await h.caller.speak(800)
        apology = await h.wait_for("agent.speech_started",
                                   lambda e: e.text.startswith("Sorry"))
        assert apology.text.startswith("Sorry")
        await h.wait_for("agent.state_changed", lambda e: e.new_state == "listening", count=3)
        await h.caller.speak(800)
        assert await h.conv.wait_ended() == "provider_error"
        assert h.tts.requests[-1] == "Please call back later."
        codes = [(e.stage, e.code) for e in h.of("session.error")]
        assert codes == [("llm", "overloaded"), ("llm", "overloaded"),
                         ("llm", "providers_exhausted")]
        await h.close()

    run_virtual(scenario())


def test_empty_llm_answer_is_an_error_not_silence() -> None:
    async def scenario() -> None:
        h = await start_call(utterances=["Hello?"], llm_scripts=[[]])
        await h.caller.speak(800)
        err = await h.wait_for("session.error")
        assert err.stage == "llm"
        apology = await h.wait_for("agent.speech_started")
        assert apology.text.startswith("Sorry")
        await h.close()

    run_virtual(scenario())


def test_max_call_duration_cuts_in_with_a_goodbye() -> None:
    async def scenario() -> None:
        s = ConversationSettings(max_call_duration_s=3.0, max_duration_goodbye="Time is up.")
        # A long greeting is still playing when the limit hits.
        h = await start_call(s, greeting="Welcome! " + "Here is a long story. " * 10)
        assert await h.conv.wait_ended() == "max_duration"
        intr = h.of("agent.speech_interrupted")
        assert len(intr) == 1 and intr[0].mono == pytest.approx(3.0, abs=0.05)
        assert h.tts.requests[-1] == "Time is up."
        goodbye = [e for e in h.of("agent.speech_completed") if e.text == "Time is up."]
        assert goodbye
        await h.close()

    run_virtual(scenario())


def test_stop_ends_at_once_and_releases_everything() -> None:
    async def scenario() -> None:
        h = await start_call(greeting="Hello and welcome to the shop. " * 3)
        await h.wait_for("agent.speech_started")
        await h.conv.stop("caller_hangup")
        assert await h.conv.wait_ended() == "caller_hangup"
        assert h.conv._core.tasks == set()
        assert h.stt.streams[0].closed and h.vad.closed
        assert not h.of("agent.speech_interrupted")  # a hangup is not a barge-in
        await h.conv.stop("again")  # idempotent
        assert await h.conv.wait_ended() == "caller_hangup"
        await h.close()

    run_virtual(scenario())


def test_a_broken_stt_stream_is_reported_and_reopened() -> None:
    async def scenario() -> None:
        stt = FakeSTT(["Are you there?"], fail_streams=1)
        h = await start_call(stt=stt, llm_scripts=[["Yes, I am."]])
        err = await h.wait_for("session.error")
        assert err.stage == "stt" and err.code == "ws_closed"
        await h.caller.pause(1000)
        assert len(stt.streams) == 2 and stt.streams[0].closed
        await h.caller.speak(800)
        done = await h.wait_for("turn.completed")
        assert done.agent_text == "Yes, I am."
        await h.close()

    run_virtual(scenario())


def test_an_stt_that_keeps_failing_ends_the_call_with_an_error() -> None:
    async def scenario() -> None:
        h = await start_call(stt=FakeSTT([], fail_streams=100))
        assert await h.conv.wait_ended() == "provider_error"
        assert [e.stage for e in h.of("session.error")] == ["stt"] * 5
        assert h.of("session.error")[-1].code == "providers_exhausted"
        # The caller is told before the line goes dead.
        assert " ".join(h.tts.requests) == ConversationSettings().failure_goodbye
        await h.close()

    run_virtual(scenario())


def test_a_failing_vad_is_reported_once_and_the_call_goes_on() -> None:
    async def scenario() -> None:
        h = await start_call(greeting="Hello there!")

        async def broken(frame: object) -> None:
            raise RuntimeError("onnx session died")

        h.vad.process = broken  # type: ignore[method-assign]
        await h.caller.pause(1000)
        errors = h.of("session.error")
        assert len(errors) == 1 and errors[0].stage == "vad"
        assert not h.conv.ended
        await h.close()

    run_virtual(scenario())
