"""Turn-taking decisions: the silence budget, presets, preemptive answers, backchannels.

The budget and presets are pure functions; the rest runs a whole conversation on fakes under
virtual time (fakes.py), so the assertions are about what the engine decided and in what order.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipelines.settings import ConversationSettings, InterruptionSettings, TurnSettings
from pipelines.turn.delay import (
    HESITATION_MARGIN_MS,
    HESITATION_MS,
    hesitation_floor_ms,
    looks_unfinished,
    silence_budget_ms,
)
from pipelines.turn.presets import PRESETS, AdaptiveTurnDelay, patch_base
from providers.base import ToolCall
from tests.pipelines.fakes import FakeSTT, FakeTTS, start_call
from tests.pipelines.virtual_clock import run_virtual

# -- the silence budget -------------------------------------------------------------------------


def test_end_of_turn_probability_sets_the_silence_budget() -> None:
    s = TurnSettings(threshold=0.5, min_wait_ms=300, max_wait_ms=1300)
    assert silence_budget_ms(0.9, "", s) == 0  # sure: no wait beyond the VAD stop
    assert silence_budget_ms(0.5, "", s) == 0
    assert silence_budget_ms(0.0, "", s) == 1300  # sure it is not over: the longest wait
    assert silence_budget_ms(0.25, "", s) == pytest.approx(800)  # halfway
    assert silence_budget_ms(0.49, "", s) == pytest.approx(320)
    # Monotonic: less sure never waits less.
    budgets = [silence_budget_ms(p / 100, "", s) for p in range(0, 51)]
    assert budgets == sorted(budgets, reverse=True)
    # No probability at all (the model did not answer): the longest wait.
    assert silence_budget_ms(None, "", s) == 1300


def test_unfinished_words_get_the_longest_budget_even_when_the_audio_sounds_done() -> None:
    s = TurnSettings(max_wait_ms=1300)
    for text in ("I would like to book an appointment or", "so um", "Well, and,",
                 "my number is four one five, five five five",
                 "my phone number is 415 555", "it's spelled J O", "That's spelled S",
                 "It's zero two zero", "I was wondering", "Could you check whether",
                 "I don't think so", "The appointment was on June",
                 "My date of birth is March"):
        assert looks_unfinished(text), text
        assert silence_budget_ms(0.95, text, s) == 1300, text
    # A sentence the STT punctuated as finished is taken at its word.
    for text in ("What time do you open tomorrow?", "Thank you", "I don't think so.",
                 "my number is 415 555 0134", "I need 2", "yes", "Who am I speaking with?",
                 "What is this about?", "My number is four one five.", "Is that right",
                 "June", "I was born in March."):
        assert not looks_unfinished(text), text
        assert silence_budget_ms(0.95, text, s) == 0, text


# -- presets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["low", "medium", "high", "auto"])
def test_each_preset_sets_its_knobs(preset: str) -> None:
    s = ConversationSettings(semantic_vad=preset)
    knobs = PRESETS[preset]
    assert s.vad.stop_ms == knobs["vad_stop_ms"]
    assert s.turn.threshold == knobs["end_of_turn_threshold"]
    assert s.turn.min_wait_ms == knobs["min_turn_delay_ms"]
    assert s.turn.max_wait_ms == knobs["max_turn_delay_ms"]
    assert s.interruption.min_speech_ms == knobs["min_interruption_duration_ms"]
    assert s.interruption.min_words == knobs["min_interruption_words"]
    assert s.interruption.false_interruption_timeout_ms == \
        knobs["false_interruption_timeout_ms"]
    assert s.interruption.hold == knobs["interruption_hold"]


def test_medium_is_the_defaults_and_eagerness_orders_the_waits() -> None:
    assert ConversationSettings(semantic_vad="medium").model_dump(exclude={"semantic_vad"}) \
        == ConversationSettings().model_dump(exclude={"semantic_vad"})
    waits = [ConversationSettings(semantic_vad=p).turn.max_wait_ms
             for p in ("low", "medium", "high")]
    assert waits == sorted(waits, reverse=True)


def test_only_the_patient_preset_ducks_and_an_override_says_otherwise() -> None:
    assert [ConversationSettings(semantic_vad=p).interruption.hold
            for p in ("low", "medium", "high", "auto")] == ["duck", "pause", "pause", "pause"]
    s = ConversationSettings(semantic_vad={"eagerness": "high", "interruption_hold": "duck"})
    assert s.interruption.hold == "duck" and s.interruption.min_speech_ms == 200
    s = ConversationSettings.model_validate(
        {"semantic_vad": "low", "interruption": {"hold": "pause"}})
    assert s.interruption.hold == "pause" and s.interruption.min_speech_ms == 500
    with pytest.raises(ValueError, match="interruption_hold"):
        ConversationSettings.model_validate(
            {"semantic_vad": {"eagerness": "low", "interruption_hold": "mute"}})


def test_explicit_knobs_and_overrides_win_over_the_preset() -> None:
    s = ConversationSettings.model_validate({
        "semantic_vad": {"eagerness": "high", "min_interruption_duration_ms": 250},
        "vad": {"stop_ms": 260},
        "interruption": InterruptionSettings(min_words=3),
    })
    assert s.vad.stop_ms == 260  # set explicitly
    assert s.interruption.min_speech_ms == 250  # the override
    assert s.interruption.min_words == 3
    assert s.turn.max_wait_ms == PRESETS["high"]["max_turn_delay_ms"]  # from the preset


def test_unknown_presets_and_overrides_are_errors_naming_the_field() -> None:
    with pytest.raises(ValidationError) as bad:
        ConversationSettings.model_validate({"semantic_vad": "fast"})
    (err,) = bad.value.errors()
    assert err["loc"] == ("semantic_vad",) and "fast" in err["msg"]
    with pytest.raises(ValidationError) as bad:
        ConversationSettings.model_validate({"semantic_vad": {"eagerness": "low", "nope": 1}})
    assert [e["loc"] for e in bad.value.errors()] == [("semantic_vad", "nope")]
    with pytest.raises(ValidationError) as bad:
        ConversationSettings.model_validate({"semantic_vad": {"eagerness": "hyper"}})
    assert [e["loc"] for e in bad.value.errors()] == [("semantic_vad", "eagerness")]


def test_changing_the_preset_in_a_patch_rederives_its_knobs() -> None:
    stored = ConversationSettings(semantic_vad="low").model_dump(mode="json")
    patch = {"semantic_vad": "high"}
    base = patch_base(stored, patch)
    s = ConversationSettings.model_validate({**base, **patch})
    assert s.turn.max_wait_ms == PRESETS["high"]["max_turn_delay_ms"]
    # A patch that leaves the preset alone keeps every stored knob.
    assert patch_base(stored, {"greeting": "hi"}) is stored


def test_a_hesitant_caller_gets_their_own_pause_as_the_least_wait() -> None:
    t = TurnSettings(max_wait_ms=1200)
    assert hesitation_floor_ms(0, t) == 0
    assert hesitation_floor_ms(HESITATION_MS - 1, t) == 0  # a breath between clauses
    assert hesitation_floor_ms(600, t) == 600 + HESITATION_MARGIN_MS
    assert hesitation_floor_ms(1100, t) == 1200  # never beyond the longest wait


def test_auto_waits_longer_for_a_caller_who_pauses_and_less_for_a_crisp_one() -> None:
    a = AdaptiveTurnDelay()
    a.resumed_after(pause_ms=900, budget_ms=1200)  # nearly taken as the end of the turn
    assert a.budget(1000) == pytest.approx(1250)
    for _ in range(20):
        a.resumed_after(900, 1200)
    assert a.budget(1000) == pytest.approx(1500)  # bounded
    b = AdaptiveTurnDelay()
    for _ in range(20):
        b.ended_confidently(speech_ms=600)
    assert b.budget(1000) == pytest.approx(670)
    b.ended_confidently(speech_ms=4000)  # a long turn says nothing about crispness
    assert b.budget(1000) == pytest.approx(670)


def test_auto_preset_adapts_within_a_call() -> None:
    async def scenario() -> None:
        s = ConversationSettings(semantic_vad="auto")
        h = await start_call(s, utterances=["I'd like to book", "for two people"],
                             eot_script=[[0.1], [0.9]], llm_scripts=[["Sure."]])
        await h.caller.speak(800)
        await h.caller.pause(700)  # well into the budget of P = 0.1, then goes on
        await h.caller.speak(800)
        await h.wait_for("turn.completed")
        assert h.conv._turns.adaptive is not None and h.conv._turns.adaptive.scale > 1.0
        await h.close()

    run_virtual(scenario())


# -- finalize at VAD stop, preemptive answers ----------------------------------------------------


def test_stt_is_finalised_at_the_vad_stop_while_the_model_runs() -> None:
    async def scenario() -> None:
        stt = FakeSTT(["Do you deliver?"], streaming=False, latency_ms=100)
        h = await start_call(stt=stt, llm_scripts=[["We do."]])
        h.endpointing.model_ms = 150  # the final (100 ms) lands before the model's answer
        await h.caller.speak(1000)
        await h.wait_for("user.speech_stopped")
        turn = await h.wait_for("user.turn_completed")
        final = next(t for t in h.of("user.transcription") if t.is_final)
        assert stt.flushes == 1
        assert final.mono < turn.mono  # the final did not wait for the end-of-turn decision
        m = await h.wait_for("turn.metrics")
        assert m.eou_to_stt_final_ms == 0
        assert m.vad_stop_to_eou_ms is not None
        assert m.vad_stop_to_eou_ms <= 200 + 150 + 20  # stop_ms + model + frame
        await h.close()

    run_virtual(scenario())


def test_a_streaming_stt_is_finalised_at_the_pause_before_the_vad_stop() -> None:
    async def scenario() -> None:
        s = ConversationSettings()
        stt = FakeSTT(["Do you deliver?"], latency_ms=150, finalizes_at_pauses=True)
        h = await start_call(s, stt=stt, llm_scripts=[["We do."]], eot_script=[[0.9]])
        await h.caller.speak(1000)
        stopped = await h.wait_for("user.speech_stopped")
        turn = await h.wait_for("user.turn_completed")
        final = next(t for t in h.of("user.transcription") if t.is_final)
        # Asked once, at the pause (half of stop_ms into the silence), not again at the stop:
        # the words came back 150 ms later, well before the VAD's stop plus 150 ms.
        assert stt.flushes == 1
        half = s.vad.stop_ms / 2
        assert (final.mono - h.caller.speech_ended_at) * 1000 <= half + 150 + 40
        # (stopped.mono is the end of speech; the stop itself came stop_ms later.)
        assert (final.mono - stopped.mono) * 1000 < s.vad.stop_ms + 150
        # The answer was started on them before the turn ended.
        m = await h.wait_for("turn.metrics")
        assert m.preemptive and m.turn_id == turn.turn_id
        await h.close()

    run_virtual(scenario())


def test_a_pause_that_goes_on_keeps_its_words_for_the_turn() -> None:
    async def scenario() -> None:
        stt = FakeSTT(["I would like", "a table for two"], finalizes_at_pauses=True)
        h = await start_call(stt=stt, llm_scripts=[["For two, done."]],
                             eot_script=[[0.9]])
        await h.caller.speak(800)
        await h.caller.pause(140)  # past the pause (100 ms), short of the stop (200 ms)
        await h.caller.speak(900)
        turn = await h.wait_for("user.turn_completed")
        assert turn.text == "I would like a table for two"
        assert stt.flushes == 2  # one per pause; the stop reused the second
        assert len(h.of("user.turn_completed")) == 1
        await h.close()

    run_virtual(scenario())


def test_the_end_of_turn_model_starts_at_the_pause_and_the_stop_uses_its_answer() -> None:
    async def scenario() -> None:
        s = ConversationSettings()
        h = await start_call(s, utterances=["Do you deliver?"], llm_scripts=[["We do."]],
                             eot_script=[[0.9]])
        h.endpointing.early = True
        h.endpointing.model_ms = 250  # a slow CPU: longer than the rest of the stop's silence
        await h.caller.speak(1000)
        stopped = await h.wait_for("user.speech_stopped")
        turn = await h.wait_for("user.turn_completed")
        # One check, started at the pause: the turn ended a model run after the pause, not
        # after the stop.
        assert (h.endpointing.early_checks, h.endpointing.calls) == (1, 1)
        assert len(h.endpointing.audio_ms) == 1
        assert turn.trigger == "model"
        # (The decision's time; the commit waits for the answer started early, see below.)
        m = await h.wait_for("turn.metrics")
        assert m.vad_stop_to_eou_ms is not None
        assert abs(m.vad_stop_to_eou_ms - (turn.mono - stopped.mono) * 1000) <= 100
        after_pause = m.vad_stop_to_eou_ms - s.vad.stop_ms / 2
        assert after_pause <= 250 + 40
        await h.close()

    run_virtual(scenario())


def test_an_early_check_is_dropped_when_the_caller_goes_on() -> None:
    async def scenario() -> None:
        h = await start_call(utterances=["I would like a table for two"],
                             llm_scripts=[["For two, done."]], eot_script=[[0.9]])
        h.endpointing.early = True
        await h.caller.speak(800)
        await h.caller.pause(140)  # past the pause (100 ms), short of the stop (200 ms)
        await h.caller.speak(900)
        turn = await h.wait_for("user.turn_completed")
        # Two pauses, two early checks; the first one's audio ended mid-sentence and its
        # answer was not used: the decision took the second, on the whole utterance.
        assert h.endpointing.early_checks == 2 and h.endpointing.calls == 1
        assert h.endpointing.audio_ms[-1] > 800 + 140 + 900 - 100
        assert turn.text == "I would like a table for two"
        await h.close()

    run_virtual(scenario())


def test_the_answer_starts_on_the_final_asked_for_as_the_caller_went_quiet() -> None:
    async def scenario() -> None:
        s = ConversationSettings()
        stt = FakeSTT(["Do you deliver?"], latency_ms=100, finalizes_at_pauses=True)
        h = await start_call(s, stt=stt, llm_scripts=[["We do."]], eot_script=[[0.9]])
        await h.caller.speak(1000)
        turn = await h.wait_for("user.turn_completed")
        stopped = h.of("user.speech_stopped")[0]
        # The final was asked for ~40 ms into the silence (two 20 ms windows), and the answer
        # started on it at once: before the VAD's stop, which needs 200 ms.
        assert stt.flushes == 1
        stop_at = stopped.mono + s.vad.stop_ms / 1000
        assert h.llm.request_times[0] < stop_at
        assert (h.llm.request_times[0] - stopped.mono) * 1000 <= 40 + 100 + 20
        m = await h.wait_for("turn.metrics")
        assert m.preemptive and m.turn_id == turn.turn_id
        assert [e.text for e in h.of("agent.speech_started")] == ["We do."]
        assert h.of("agent.speech_started")[0].mono >= turn.mono  # held until the turn ended
        await h.close()

    run_virtual(scenario())


def test_an_answer_started_in_a_short_silence_is_dropped_when_the_caller_goes_on() -> None:
    async def scenario() -> None:
        stt = FakeSTT(["I would like", "a table for two"], latency_ms=60,
                      finalizes_at_pauses=True)
        h = await start_call(stt=stt, eot_script=[[0.9]],
                             llm_scripts=[["What would you like?"], ["Your table is booked."]])
        await h.caller.speak(800)
        await h.caller.pause(160)  # the final (40 + 60 ms) is in; the stop (200 ms) never comes
        assert [r["messages"][-1]["content"] for r in h.llm.requests] == ["I would like"]
        await h.caller.speak(900)
        done = await h.wait_for("turn.completed")
        # No stop came between the two parts: one turn, one answer, for all the words.
        assert len(h.of("user.speech_stopped")) == 1
        assert [r["messages"][-1]["content"] for r in h.llm.requests] == [
            "I would like", "I would like a table for two"]
        assert done.agent_text == "Your table is booked."
        assert [e.text for e in h.of("agent.speech_started")] == ["Your table is booked."]
        assert [m["content"] for m in h.conv.context.messages()[1:]] == [
            "I would like a table for two", "Your table is booked."]
        await h.close()

    run_virtual(scenario())


def test_a_caller_who_goes_on_before_the_early_answer_could_play_is_not_cut_off() -> None:
    async def scenario() -> None:
        stt = FakeSTT(["When I drink something", "cold it still hurts"], latency_ms=40,
                      finalizes_at_pauses=True)
        h = await start_call(stt=stt, eot_script=[[0.9]],
                             llm_scripts=[["Sorry to hear that."], ["Please come back in."]])
        await h.caller.speak(1200)
        # Sure (P 0.9) at the stop, ~260 ms into the silence; the answer started on the words
        # at ~80 ms has its first audio ~340 ms in (LLM 200, TTS 60). The caller goes on at
        # 300 ms: the turn was decided, but not committed yet.
        await h.caller.pause(300)
        await h.caller.speak(1000)
        turn = await h.wait_for("user.turn_completed")
        assert turn.text == "When I drink something cold it still hurts"
        await h.wait_for("turn.completed")
        assert len(h.of("user.turn_completed")) == 1
        assert [e.text for e in h.of("agent.speech_started")] == ["Please come back in."]
        await h.close()

    run_virtual(scenario())


def test_preemptive_answer_plays_once_the_turn_ends() -> None:
    async def scenario() -> None:
        h = await start_call(utterances=["What time do you open?"],
                             llm_scripts=[["We open at nine."]],
                             eot_script=[[0.3, 0.3, 0.3]])  # unsure: waits ~720 ms
        await h.caller.speak(1200)
        turn = await h.wait_for("user.turn_completed")
        started = await h.wait_for("agent.speech_started")
        done = await h.wait_for("turn.completed")
        assert turn.trigger == "timeout"
        # One LLM request, made before the turn was over, for exactly the caller's words.
        assert len(h.llm.requests) == 1
        assert h.llm.requests[0]["messages"][-1] == {"role": "user",
                                                     "content": "What time do you open?"}
        assert h.tts.requests and started.mono >= turn.mono  # nothing played before the end
        m = await h.wait_for("turn.metrics")
        assert m.preemptive and m.turn_id == turn.turn_id == done.turn_id
        # The LLM (200 ms) and TTS (60 ms) finished during the wait: the first audio goes out
        # as the turn ends, and the providers owed nothing after it.
        assert m.first_audio_out_ms is not None and m.vad_stop_to_eou_ms is not None
        assert m.first_audio_out_ms - m.vad_stop_to_eou_ms <= 20
        assert m.server_added_ms == m.first_audio_out_ms
        assert done.agent_text == done.heard_text == "We open at nine."
        assert h.states() == ["listening", "thinking", "speaking", "listening"]
        await h.close()

    run_virtual(scenario())


def test_preemptive_answer_is_discarded_when_the_final_transcript_differs() -> None:
    async def scenario() -> None:
        stt = FakeSTT(["Do you open on Sunday"],
                      corrections={"Do you open on Sunday": "Do you open on Monday?"})
        h = await start_call(stt=stt, eot_script=[[0.3]],
                             llm_scripts=[["On Sundays we are closed."],
                                          ["Yes, from nine on Mondays."]])
        await h.caller.speak(1200)
        turn = await h.wait_for("user.turn_completed")
        done = await h.wait_for("turn.completed")
        assert turn.text == "Do you open on Monday?"
        assert [r["messages"][-1]["content"] for r in h.llm.requests] == [
            "Do you open on Sunday", "Do you open on Monday?"]
        assert done.agent_text == "Yes, from nine on Mondays."
        # The corrected words were answered at once, while the end of the turn was still
        # being decided, not only after it.
        m = await h.wait_for("turn.metrics")
        assert m.preemptive and m.turn_id == turn.turn_id
        # Whatever the first answer synthesised, none of it reached the caller or the context.
        heard = [e.text for e in h.of("agent.speech_started")]
        assert heard == ["Yes, from nine on Mondays."]
        assert [m["content"] for m in h.conv.context.messages()[1:]] == [
            "Do you open on Monday?", "Yes, from nine on Mondays."]
        assert len(h.of("turn.completed")) == 1
        await h.close()

    run_virtual(scenario())


def test_preemptive_answer_runs_no_tool_and_is_discarded_when_the_caller_goes_on() -> None:
    async def scenario() -> None:
        ran: list[str] = []

        async def executor(call: ToolCall) -> dict[str, str]:
            ran.append(call.name)
            return {"ok": "booked"}

        h = await start_call(
            utterances=["Book me a table", "for two at eight please"],
            eot_script=[[0.2], [0.95]],
            llm_scripts=[[ToolCall("c1", "book", {"people": 1})], ["Done, two at eight."]],
            tool_executor=executor, tools=[{"name": "book"}],
        )
        await h.caller.speak(1000)
        await h.caller.pause(600)  # the first answer has already asked for its tool
        assert len(h.llm.requests) == 1
        await h.caller.speak(1200)
        await h.wait_for("turn.completed")
        assert ran == []  # the held-back answer never acted
        assert len(h.of("user.turn_completed")) == 1
        assert [m["content"] for m in h.conv.context.messages()[1:]] == [
            "Book me a table for two at eight please", "Done, two at eight."]
        await h.close()

    run_virtual(scenario())


# -- backchannels ---------------------------------------------------------------------------------


def test_a_backchannel_while_the_agent_speaks_is_an_event_not_a_turn() -> None:
    async def scenario() -> None:
        h = await start_call(utterances=["Tell me about your prices", "mhm"],
                             llm_scripts=[["Our prices start at ten dollars for a basic "
                                           "checkup and go up to fifty for the full one."]])
        await h.caller.speak(1000)
        await h.wait_for("agent.speech_started")
        await h.caller.pause(400)
        await h.caller.speak(400)  # "mhm"
        back = await h.wait_for("user.backchannel")
        done = await h.wait_for("turn.completed")
        assert back.text == "mhm"
        assert not done.interrupted and done.heard_text == done.agent_text
        assert len(h.of("user.turn_completed")) == 1
        assert len(h.llm.requests) == 1
        await h.close()

    run_virtual(scenario())


def test_a_backchannel_that_stopped_the_agent_lets_it_carry_on() -> None:
    async def scenario() -> None:
        # A batch STT shows no words while the caller talks, so a long "mmmhm" outlasting the
        # hold window commits the interruption; its final is only a backchannel.
        s = ConversationSettings(interruption=InterruptionSettings(
            false_interruption_timeout_ms=600))
        stt = FakeSTT(["What are your prices", "mhm"], streaming=False)
        answer = ("Our prices start at ten dollars for a basic checkup. "
                  "The full one is fifty dollars.")
        h = await start_call(s, stt=stt, llm_scripts=[[answer]],
                             tts=FakeTTS(ms_per_char=40))
        await h.caller.speak(1000)
        await h.wait_for("agent.speech_started")
        await h.caller.pause(300)
        await h.caller.speak(900)
        await h.wait_for("agent.speech_interrupted")
        back = await h.wait_for("user.backchannel")
        assert back.text == "mhm"
        await h.caller.pause(4000)
        assert len(h.llm.requests) == 1  # no answer to "mhm"
        assert len(h.of("user.turn_completed")) == 1
        # The agent said the rest of its answer: what the caller had not heard.
        rest = [e.text for e in h.of("agent.speech_started")][-1]
        assert rest and rest != answer and rest in answer
        await h.close()

    run_virtual(scenario())
