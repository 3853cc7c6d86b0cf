"""Turn-taking: when does the caller's turn end, and what does the agent answer?

Everything runs on fakes under virtual time (see fakes.py / virtual_clock.py), so timings are
exact: they check the engine's logic, not the machine's speed.
"""

from __future__ import annotations

import numpy as np

from pipelines.settings import ConversationSettings, TurnSettings
from pipelines.turn.delay import HESITATION_MARGIN_MS
from tests.pipelines.fakes import FakeSTT, Pause, start_call
from tests.pipelines.virtual_clock import run_virtual

FRAME_MS = 20


def test_complete_question_ends_the_turn_within_stop_ms_plus_model_time() -> None:
    async def scenario() -> None:
        # The answer is not started early here (tests/pipelines/test_turn_taking.py covers
        # that), so each stage shows on its own.
        s = ConversationSettings(turn=TurnSettings(preemptive_generation=False))
        h = await start_call(s, utterances=["What time do you open tomorrow?"],
                             llm_scripts=[["We open at nine."]])
        await h.caller.pause(300)
        await h.caller.speak(1500)
        spoke_until = h.caller.speech_ended_at
        turn = await h.wait_for("user.turn_completed")
        assert turn.text == "What time do you open tomorrow?"
        assert turn.trigger == "model" and turn.eou_probability == 0.9
        # VAD stop hysteresis + one model run (+ ≤1 frame): the STT was asked for its final at
        # the VAD stop, and it arrived while the model ran.
        budget_ms = s.vad.stop_ms + h.endpointing.model_ms + FRAME_MS
        assert (turn.mono - spoke_until) * 1000 <= budget_ms
        # The speech edges are reported at the true edge, not when the hysteresis fired.
        stopped = h.of("user.speech_stopped")[0]
        assert abs(stopped.mono - spoke_until) * 1000 <= FRAME_MS
        assert stopped.speech_ms == 1500

        done = await h.wait_for("turn.completed")
        assert done.turn_id == turn.turn_id
        assert done.agent_text == done.heard_text == "We open at nine."
        assert not done.interrupted
        m = h.of("turn.metrics")[0]
        assert m.turn_id == turn.turn_id
        assert abs(m.vad_stop_to_eou_ms - (s.vad.stop_ms + h.endpointing.model_ms)) <= FRAME_MS
        assert m.eou_to_stt_final_ms == 0
        assert m.llm_ttft_ms == h.llm.ttft_ms
        assert m.tts_ttfb_ms == h.tts.ttfb_ms
        assert m.first_audio_out_ms is not None and m.played_ack_ms is not None
        assert m.played_ack_ms > m.first_audio_out_ms
        # Only the end-of-turn wait is ours; the rest is time spent waiting on providers.
        assert m.server_added_ms is not None and m.server_added_ms <= m.vad_stop_to_eou_ms + 1

        assert h.stt.opened_with == [(16000, "en-US")]
        assert h.conv.context.messages() == [
            {"role": "system", "content": "You are a helpful receptionist."},
            {"role": "user", "content": "What time do you open tomorrow?"},
            {"role": "assistant", "content": "We open at nine."},
        ]
        assert all(h.sink.fully_played(seg) for seg in h.sink.segments)
        assert h.states() == ["listening", "thinking", "speaking", "listening"]
        # The end-of-turn model saw the turn's audio (with a little pre-roll), not 8 s of past.
        assert 1500 <= h.endpointing.audio_ms[0] <= 1500 + 300 + s.vad.stop_ms + 100
        await h.close()

    run_virtual(scenario())


def test_unfinished_sentence_with_a_400ms_pause_does_not_end_the_turn() -> None:
    async def scenario() -> None:
        # The model says "incomplete" on the first part; the caller carries on after 400 ms.
        # The answer started at the pause (preemptive generation) is thrown away unheard.
        h = await start_call(
            utterances=["I'd like to book a table for", "four people at eight."],
            eot_script=[[0.1], [0.95]],
            llm_scripts=[["A table for?"], ["Sure, a table for four at eight."]],
        )
        await h.caller.pause(200)
        await h.caller.speak(1400)
        await h.caller.pause(400)
        await h.caller.speak(1200)
        turn = await h.wait_for("user.turn_completed")
        assert turn.text == "I'd like to book a table for four people at eight."
        await h.wait_for("turn.completed")
        await h.caller.pause(2000)
        assert len(h.of("user.turn_completed")) == 1
        assert h.endpointing.calls == 2 and h.endpointing.cancelled == 1
        assert len(h.llm.requests) == 2
        assert h.llm.requests[0]["messages"][-1]["content"] == "I'd like to book a table for"
        done = h.of("turn.completed")
        assert [d.agent_text for d in done] == ["Sure, a table for four at eight."]
        assert "A table for?" not in [e.text for e in h.of("agent.speech_started")]
        assert [m["content"] for m in h.conv.context.messages()[1:]] == [
            "I'd like to book a table for four people at eight.",
            "Sure, a table for four at eight."]
        assert len(h.of("user.speech_started")) == 2
        await h.close()

    run_virtual(scenario())


def test_a_caller_who_paused_mid_thought_is_given_that_pause_again() -> None:
    async def scenario() -> None:
        # "I was wondering [900 ms] if I could move my appointment [500 ms] to the afternoon."
        # The middle part sounds finished (P 0.95), but this caller already went on after 900
        # ms: the 500 ms pause is not the end, and the real end waits 900 + 200 ms.
        h = await start_call(
            utterances=["I was wondering", "if I could move my appointment",
                        "to the afternoon."],
            eot_script=[[0.1], [0.95], [0.95]],
            llm_scripts=[["Sure."], ["Sure."], ["Of course, which day?"]],
        )
        await h.caller.pause(200)
        await h.caller.speak(900)
        await h.caller.pause(900)
        await h.caller.speak(1500)
        await h.caller.pause(500)
        await h.caller.speak(900)
        spoke_until = h.caller.speech_ended_at
        turn = await h.wait_for("user.turn_completed")
        assert turn.text == "I was wondering if I could move my appointment to the afternoon."
        waited_ms = (turn.mono - spoke_until) * 1000
        # (The pause as the VAD timed it, to a frame or two.)
        assert 900 + HESITATION_MARGIN_MS - 40 <= waited_ms <= 900 + HESITATION_MARGIN_MS + 200
        assert len(h.of("user.turn_completed")) == 1
        await h.close()

    run_virtual(scenario())


def test_unfinished_words_wait_the_longest_budget() -> None:
    async def scenario() -> None:
        s = ConversationSettings(turn=TurnSettings(max_wait_ms=2000))
        h = await start_call(s, utterances=["and then um"], eot_script=[[0.2]])
        await h.caller.speak(1000)
        spoke_until = h.caller.speech_ended_at
        turn = await h.wait_for("user.turn_completed")
        assert turn.trigger == "timeout" and turn.text == "and then um"
        waited_ms = (turn.mono - spoke_until) * 1000
        assert s.turn.max_wait_ms <= waited_ms <= s.turn.max_wait_ms + 200
        await h.close()

    run_virtual(scenario())


def test_a_sure_model_is_overruled_by_words_that_stop_mid_thought() -> None:
    async def scenario() -> None:
        # The model calls the pause a finished turn before the STT's final has come in; the
        # final ("... whether") says otherwise, so the agent waits, and the caller goes on.
        stt = FakeSTT(["Could you check whether", "doctor Patel is in on Monday?"],
                      streaming=False, latency_ms=200)
        h = await start_call(stt=stt, eot_script=[[0.95], [0.95]],
                             llm_scripts=[["Check what?"], ["Yes, she is."]])
        await h.caller.speak(1300)
        await h.caller.pause(600)
        await h.caller.speak(1500)
        turn = await h.wait_for("user.turn_completed")
        assert turn.text == "Could you check whether doctor Patel is in on Monday?"
        await h.wait_for("turn.completed")
        assert len(h.of("user.turn_completed")) == 1
        assert "Check what?" not in [e.text for e in h.of("agent.speech_started")]
        await h.close()

    run_virtual(scenario())


def test_a_sure_model_and_finished_words_answer_at_once() -> None:
    async def scenario() -> None:
        stt = FakeSTT(["Could you check whether she is in?"], streaming=False, latency_ms=200)
        h = await start_call(stt=stt, eot_script=[[0.95]], llm_scripts=[["She is."]])
        await h.caller.speak(1500)
        spoke_until = h.caller.speech_ended_at
        turn = await h.wait_for("user.turn_completed")
        assert turn.trigger == "model"
        # VAD stop, then the final transcript: no wait for words that sound done.
        s = ConversationSettings()
        assert (turn.mono - spoke_until) * 1000 <= s.vad.stop_ms + 200 + 2 * FRAME_MS
        await h.close()

    run_virtual(scenario())


def test_noise_without_words_goes_back_to_listening_without_calling_the_llm() -> None:
    async def scenario() -> None:
        h = await start_call(utterances=[""])
        await h.caller.speak(600)
        await h.caller.pause(2000)
        assert h.of("user.speech_stopped")
        assert not h.of("user.turn_completed")
        assert h.llm.requests == []
        assert h.conv.state == "listening"
        await h.close()

    run_virtual(scenario())


def test_batch_stt_is_flushed_and_its_final_awaited() -> None:
    async def scenario() -> None:
        # A batch engine says nothing until flush(); the turn waits for its final.
        stt = FakeSTT(["Do you deliver?"], streaming=False, latency_ms=300)
        h = await start_call(stt=stt, llm_scripts=[["We do."]])
        await h.caller.speak(1000)
        turn = await h.wait_for("user.turn_completed")
        assert turn.text == "Do you deliver?"
        assert stt.flushes == 1
        assert not [t for t in h.of("user.transcription") if not t.is_final]
        m = await h.wait_for("turn.metrics")
        # Flushed at the VAD stop: only what the final takes beyond the model's check shows.
        assert m.eou_to_stt_final_ms == 300 - h.endpointing.model_ms
        await h.close()

    run_virtual(scenario())


def test_missing_final_transcript_falls_back_to_the_last_interim() -> None:
    async def scenario() -> None:
        s = ConversationSettings(turn=TurnSettings(stt_final_timeout_ms=500))
        stt = FakeSTT(["Is anyone there"], latency_ms=40)
        h = await start_call(s, stt=stt)

        async def no_final() -> None:  # a flush the engine never answers
            return None

        await h.caller.speak(1000)
        h.stt.streams[0].flush = no_final  # type: ignore[method-assign]
        turn = await h.wait_for("user.turn_completed")
        assert turn.text == "Is anyone there"
        m = await h.wait_for("turn.metrics")
        assert m.eou_to_stt_final_ms == 500
        await h.close()

    run_virtual(scenario())


def test_greeting_is_spoken_first_and_kept_in_context() -> None:
    async def scenario() -> None:
        h = await start_call(greeting="Hello! How can I help?")
        await h.wait_for("agent.state_changed", lambda e: e.new_state == "listening")
        assert h.tts.requests == ["Hello!", "How can I help?"]
        assert h.states() == ["speaking", "listening"]
        assert h.conv.context.messages()[1:] == [
            {"role": "assistant", "content": "Hello! How can I help?"}
        ]
        await h.close()

    run_virtual(scenario())


def test_answer_is_streamed_sentence_by_sentence() -> None:
    async def scenario() -> None:
        # The second sentence only arrives 2 s later: the first must already be playing.
        h = await start_call(utterances=["Tell me about your menu."],
                             llm_scripts=[["We have pizza. ", Pause(2000), "And pasta too."]])
        await h.caller.speak(1000)
        turn = await h.wait_for("user.turn_completed")
        first = await h.wait_for("agent.speech_started")
        assert first.text == "We have pizza."
        assert (first.mono - turn.mono) * 1000 < 1000
        second = await h.wait_for("agent.speech_started", count=2)
        assert second.text == "And pasta too."
        done = await h.wait_for("turn.completed")
        assert done.agent_text == "We have pizza. And pasta too."
        assert h.conv.context.messages()[-1] == {
            "role": "assistant", "content": "We have pizza. And pasta too."
        }
        await h.close()

    run_virtual(scenario())


def test_consecutive_turns_and_context_cap() -> None:
    async def scenario() -> None:
        s = ConversationSettings(max_context_items=5)
        questions = [f"Question number {i}." for i in range(4)]
        h = await start_call(s, utterances=questions,
                             llm_scripts=[[f"Answer {i}."] for i in range(4)])
        for i in range(4):
            await h.caller.speak(800)
            await h.wait_for("turn.completed", count=i + 1)
        msgs = h.conv.context.messages()
        assert len(msgs) == 5
        assert msgs[0]["role"] == "system"
        assert [m["content"] for m in msgs[1:]] == [
            "Question number 2.", "Answer 2.", "Question number 3.", "Answer 3."
        ]
        # Each request carried the context as it stood (bounded too).
        assert all(len(r["messages"]) <= 5 for r in h.llm.requests)
        await h.close()

    run_virtual(scenario())


def test_a_call_behind_catches_up_in_one_vad_round_trip() -> None:
    """Frames that waited in the inbox (the VAD's windows queued behind an end-of-turn check)
    go to the VAD together, and their events still reach turn-taking in order: nothing of the
    caller is dropped, and the turn ends as it would have."""
    async def scenario() -> None:
        h = await start_call(utterances=["What time do you open tomorrow?"],
                             llm_scripts=[["We open at nine."]])
        await h.caller.pause(200)
        await h.caller.stop()  # the transport stalls; its frames arrive in one burst
        speech = np.full(320, 3000, dtype=np.int16)
        for _ in range(60):
            await h.conv.push_audio(speech)
        h.caller.start()  # back to one frame every 20 ms (silence)
        turn = await h.wait_for("user.turn_completed")
        assert turn.text == "What time do you open tomorrow?"
        assert max(h.vad.calls) >= 60
        assert h.of("user.speech_stopped")[0].speech_ms == 1200
        assert h.conv.dropped_frames == 0
        await h.close()

    run_virtual(scenario())


def test_stt_audio_goes_in_chunks_in_silence_and_frame_by_frame_in_speech() -> None:
    async def scenario() -> None:
        h = await start_call(utterances=["What time do you open tomorrow?"],
                             llm_scripts=[["We open at nine."]])
        await h.caller.pause(1000)
        (stream,) = h.stt.streams
        silent = list(stream.chunks)
        assert silent and max(silent) == 5 * 320 and sum(silent) >= 40 * 320
        assert len(silent) <= 12  # 1 s of silence in ≥ 100 ms pieces, not 50 frames
        before = len(stream.chunks)
        await h.caller.speak(1000)
        speaking = stream.chunks[before:]
        # Once the VAD hears speech every frame goes at once: the words are never held back.
        assert speaking[-30:] == [320] * 30
        turn = await h.wait_for("user.turn_completed")
        assert turn.text == "What time do you open tomorrow?"
        await h.close()

    run_virtual(scenario())
