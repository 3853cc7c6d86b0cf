"""The host-facing controls: say, interrupt, inject, DTMF, thinking audio, input robustness."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pipelines.settings import ConversationSettings
from tests.pipelines.fakes import FakeLLM, start_call
from tests.pipelines.virtual_clock import run_virtual


def test_say_text_is_awaitable_until_played_and_added_to_context() -> None:
    async def scenario() -> None:
        h = await start_call()
        handle = h.conv.say("Your table is ready. Please come in.")
        await handle
        assert handle.done() and not handle.interrupted
        assert handle.heard_text == "Your table is ready. Please come in."
        assert all(h.sink.fully_played(s) for s in h.sink.segments)
        assert h.conv.context.messages()[-1]["content"] == "Your table is ready. Please come in."
        quiet = h.conv.say("Internal note.", add_to_context=False)
        await quiet
        assert len(h.conv.context.items) == 1
        await h.close()

    run_virtual(scenario())


def test_say_audio_plays_the_clip_as_one_segment() -> None:
    async def scenario() -> None:
        h = await start_call()
        clip = np.full(8000, 1000, dtype=np.int16)  # 1 s at 8 kHz
        handle = h.conv.say(clip, sample_rate=8000, transcript="Hold music")
        await handle
        (seg,) = h.sink.segments
        assert h.sink.written[seg] == pytest.approx(1000)
        assert h.tts.requests == []
        assert h.conv.context.messages()[-1]["content"] == "Hold music"
        with pytest.raises(ValueError):
            h.conv.say("   ")
        await h.close()

    run_virtual(scenario())


def test_speeches_queue_and_interrupt_stops_the_current_one() -> None:
    async def scenario() -> None:
        h = await start_call()
        first = h.conv.say("This is a long announcement that goes on and on for a while.")
        second = h.conv.say("Second.")
        await h.wait_for("agent.speech_started")
        await asyncio.sleep(1.0)
        assert h.conv.interrupt() is first
        await first
        await second
        assert first.interrupted and second.stop_reason == "cancelled"
        assert len(h.sink.clears) == 1
        heard = first.heard_text
        assert heard and len(heard) < len(first.text)
        assert h.conv.context.messages()[-1] == {"role": "assistant", "content": heard}
        assert "Second." not in h.tts.requests
        await h.close()

    run_virtual(scenario())


def test_uninterruptible_speech_ignores_barge_in_and_interrupt_unless_forced() -> None:
    async def scenario() -> None:
        h = await start_call(utterances=["hello hello"])
        handle = h.conv.say("Please listen to this important notice in full.",
                            interruptible=False)
        await h.wait_for("agent.speech_started")
        await h.caller.speak(800)
        assert h.conv.interrupt() is None
        await h.caller.pause(200)
        assert not h.of("agent.speech_interrupted") and "paused" not in h.states()
        assert h.conv.interrupt(force=True) is handle
        await handle
        assert handle.interrupted
        await h.close()

    run_virtual(scenario())


def test_handle_cancel_removes_queued_or_stops_playing_speech() -> None:
    async def scenario() -> None:
        h = await start_call()
        a = h.conv.say("First sentence that plays for a little while.")
        b = h.conv.say("Never heard.")
        b.cancel()
        await b
        assert b.stop_reason == "cancelled"
        await h.wait_for("agent.speech_started")
        a.cancel()
        await a
        assert a.stop_reason == "cancelled"
        assert "Never heard." not in h.tts.requests
        await h.close()

    run_virtual(scenario())


def test_dtmf_is_an_event_and_a_user_turn_after_the_inter_digit_gap() -> None:
    async def scenario() -> None:
        s = ConversationSettings(dtmf_inter_digit_ms=1000)
        h = await start_call(s, llm_scripts=[["You pressed one two."], ["Pound noted."]])
        h.conv.on_dtmf("1")
        await asyncio.sleep(0.5)
        h.conv.on_dtmf("2")
        turn = await h.wait_for("user.turn_completed")
        assert [e.digit for e in h.of("user.dtmf")] == ["1", "2"]
        assert turn.text == "[DTMF 12]" and turn.trigger == "dtmf"
        assert turn.mono - h.of("user.dtmf")[1].mono == pytest.approx(1.0)
        await h.wait_for("turn.completed")
        # '#' ends the entry at once.
        h.conv.on_dtmf("#")
        turn2 = await h.wait_for("user.turn_completed", count=2)
        assert turn2.text == "[DTMF #]" and turn2.mono == pytest.approx(h.of("user.dtmf")[2].mono)
        assert h.llm.requests[0]["messages"][-1] == {"role": "user", "content": "[DTMF 12]"}
        await h.close()

    run_virtual(scenario())


def test_dtmf_interrupts_the_agent() -> None:
    async def scenario() -> None:
        h = await start_call(greeting="Press one for sales or two for support, or stay on.",
                             llm_scripts=[["Connecting you to support."]])
        await h.wait_for("agent.speech_started")
        await asyncio.sleep(0.6)
        h.conv.on_dtmf("2")
        intr = await h.wait_for("agent.speech_interrupted")
        assert intr.heard_text and len(h.sink.clears) == 1
        turn = await h.wait_for("user.turn_completed")
        assert turn.text == "[DTMF 2]"
        await h.close()

    run_virtual(scenario())


def test_inject_adds_context_for_the_next_turn() -> None:
    async def scenario() -> None:
        h = await start_call(utterances=["What's my balance?"], llm_scripts=[["It is $12."]])
        h.conv.inject("The caller's balance is $12.")
        await h.caller.speak(800)
        await h.wait_for("turn.completed")
        msgs = h.llm.requests[0]["messages"]
        assert msgs[1] == {"role": "system", "content": "The caller's balance is $12."}
        assert msgs[2]["role"] == "user"
        await h.close()

    run_virtual(scenario())


def test_thinking_audio_plays_while_the_llm_is_slow_and_stops_before_the_answer() -> None:
    async def scenario() -> None:
        s = ConversationSettings(thinking_audio=True)
        llm = FakeLLM([["Here you go."]], ttft_ms=2000)
        h = await start_call(s, utterances=["Give me a moment of your time"], llm=llm)
        await h.caller.speak(800)
        answer = await h.wait_for("agent.speech_started")
        thinking = [s for s in h.sink.segments if s.startswith("thinking-")]
        assert len(thinking) == 1 and h.sink.played[thinking[0]] > 1000
        assert len(h.sink.clears) == 1 and h.sink.clears[0][0] <= answer.mono
        # Nothing of the thinking tone plays once the answer starts.
        assert not [t for t, seg in h.sink.play_log if seg == thinking[0] and t > answer.mono]
        done = await h.wait_for("turn.completed")
        assert done.heard_text == "Here you go."
        await h.close()

    run_virtual(scenario())


def test_odd_input_frames_do_not_break_the_call() -> None:
    async def scenario() -> None:
        h = await start_call(utterances=["Hello there"], llm_scripts=[["Hi!"]])
        await h.conv.push_audio(np.zeros(320, dtype=np.float32))  # converted
        await h.caller.speak(800)
        await h.wait_for("turn.completed")
        # Before start / after stop: ignored.
        await h.conv.stop("done")
        await h.conv.push_audio(np.zeros(320, dtype=np.int16))
        h.conv.on_dtmf("5")
        with pytest.raises(RuntimeError):
            h.conv.say("late")
        await h.close()

    run_virtual(scenario())
