"""Soft barge-in: the hold clears playout at once; coughs and backchannels resume the agent from
where the caller stopped hearing it, real interruptions cut it off and the assistant message
keeps only what the caller heard. A ducked hold (`interruption.hold: duck`) keeps the agent
talking softly instead, and silences it only at the commit."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import pytest

from pipelines.engine.barge_in import DUCK_GAIN
from pipelines.settings import ConversationSettings, InterruptionSettings
from pipelines.speech_output import RESUME_FADE_MS, RESUME_REWIND_MS, text_prefix
from pipelines.vad.base import VadEvent
from pipelines.vad.segmenter import ONSET_MS
from tests.pipelines.fakes import FakeLLM, FakeSTT, Harness, start_call
from tests.pipelines.virtual_clock import run_virtual

# ~5.8 s of agent speech with the fake TTS (50 ms per character), in three sentences.
GREETING = (
    "Thanks for calling Luigi's, the best pizza in town. "
    "We are open from nine in the morning until ten at night. "
    "How can I help you today?"
)


def chain(h: Harness, seg: str) -> list[str]:
    """The sink segments that carried one agent segment: itself, then one per resume."""
    out = [seg]
    while f"{seg}~{len(out)}" in h.sink.written:
        out.append(f"{seg}~{len(out)}")
    return out


def heard_ms(h: Harness, seg: str) -> float:
    """How far into `seg` the caller got: each resume starts RESUME_REWIND_MS before the point
    where the previous sink segment was cut."""
    pos = 0.0
    for i, sink_seg in enumerate(chain(h, seg)):
        start = 0.0 if i == 0 else max(0.0, pos - RESUME_REWIND_MS)
        pos = start + h.sink.played[sink_seg]
    return pos


def heard_in_full(h: Harness, seg: str) -> bool:
    return h.sink.fully_played(chain(h, seg)[-1])


def expected_heard(h: Harness, text_of: dict[str, str]) -> str:
    """What the caller heard according to the sink: whole segments, plus the played share of
    the segment that was cut (its duration is known from the fake TTS)."""
    parts = []
    for seg in h.sink.segments:
        if seg not in text_of:
            continue
        text = text_of[seg]
        fraction = heard_ms(h, seg) / h.tts.duration_ms(text)
        piece = text_prefix(text, fraction)
        if piece:
            parts.append(piece)
    return " ".join(parts)


def segment_texts(h: Harness) -> dict[str, str]:
    return {e.segment_id: e.text for e in h.of("agent.speech_started")}


def test_a_click_shorter_than_a_start_holds_the_agent_only_while_it_lasts() -> None:
    async def scenario() -> None:
        h = await start_call(greeting=GREETING, utterances=[""])
        await h.wait_for("agent.speech_started")
        await h.caller.pause(1000)
        await h.caller.speak(120)  # an onset (60 ms), never a start (200 ms)
        fi = await h.wait_for("agent.false_interruption")
        await h.wait_for("agent.state_changed", lambda e: e.new_state == "listening")

        assert fi.speech_ms == pytest.approx(120) and fi.text == ""
        # Held at the onset, let go where the sound ended: the agent was silent for the
        # click's remaining 60 ms and the resume's own round trip, not a VAD stop's wait.
        assert len(h.sink.clears) == 1
        cleared_at, _heard = h.sink.clears[0]
        assert (fi.mono - cleared_at) * 1000 <= 120 - ONSET_MS + 40
        assert not h.of("user.speech_started") and not h.of("agent.speech_interrupted")
        assert h.states() == ["speaking", "paused", "speaking", "listening"]
        texts = segment_texts(h)
        assert " ".join(texts[s] for s in h.sink.segments if s in texts) == GREETING
        assert all(heard_in_full(h, s) for s in texts) and h.sink.dropped_ms == 0
        assert h.llm.requests == [] and not h.of("user.turn_completed")
        await h.close()

    run_virtual(scenario())


def test_an_onset_the_vad_never_confirms_or_drops_is_let_go_when_the_window_ends() -> None:
    async def scenario() -> None:
        h = await start_call(greeting=GREETING, utterances=[""])
        # A VAD that fails after an onset sends neither its start nor its "onset_lost".
        update = h.vad._seg.update

        def no_loss(*args: Any) -> VadEvent | None:
            e = update(*args)
            return None if e is not None and e.kind == "onset_lost" else e

        h.vad._seg.update = no_loss  # type: ignore[method-assign]
        await h.wait_for("agent.speech_started")
        await h.caller.pause(1000)
        await h.caller.speak(120)
        fi = await h.wait_for("agent.false_interruption")
        window = h.conv.settings.interruption.false_interruption_timeout_ms
        onset_at = h.sink.clears[0][0] - ONSET_MS / 1000
        assert (fi.mono - onset_at) * 1000 == pytest.approx(window, abs=40)
        assert not h.of("agent.speech_interrupted") and h.llm.requests == []
        await h.wait_for("agent.state_changed", lambda e: e.new_state == "listening")
        await h.close()

    run_virtual(scenario())


def test_a_250ms_cough_clears_at_the_hold_and_resumes_from_the_heard_position() -> None:
    async def scenario() -> None:
        h = await start_call(greeting=GREETING, utterances=[""])
        await h.wait_for("agent.speech_started")
        await h.caller.pause(1000)
        await h.caller.speak(260)
        fi = await h.wait_for("agent.false_interruption")
        assert fi.speech_ms < 300
        await h.wait_for("agent.state_changed", lambda e: e.new_state == "listening")

        assert not h.of("agent.speech_interrupted")
        # The hold cleared playout at the VAD's onset (60 ms of speech), before its start.
        onset = h.of("user.speech_started")[0].mono
        assert len(h.sink.clears) == 1
        cleared_at, heard = h.sink.clears[0]
        assert ONSET_MS - 1 <= (cleared_at - onset) * 1000 <= ONSET_MS + 20
        assert not [t for t, _seg in h.sink.play_log if cleared_at < t <= fi.mono]
        assert h.states() == ["speaking", "paused", "speaking", "listening"]
        texts = segment_texts(h)
        cut = next(s for s in texts if len(chain(h, s)) > 1)
        resumed = f"{cut}~1"
        assert chain(h, cut) == [cut, resumed] and h.sink.played[cut] == heard
        # The resume continues where the caller stopped hearing (a 40 ms overlap, faded in).
        tone = h.tts.audio(texts[cut])
        n = int(heard * 16)
        np.testing.assert_array_equal(h.sink.samples(cut)[:n], tone[:n])
        start, fade = int((heard - RESUME_REWIND_MS) * 16), int(RESUME_FADE_MS * 16)
        again = h.sink.samples(resumed)
        np.testing.assert_array_equal(again[fade:], tone[start + fade:])
        assert len(again) == len(tone) - start
        assert np.abs(again[:fade].astype(int)).max() < np.abs(tone[start:start + fade]).max()
        # Every sentence was heard in full, once, but for the overlap.
        assert " ".join(texts[s] for s in h.sink.segments if s in texts) == GREETING
        assert all(heard_in_full(h, s) for s in texts) and h.sink.dropped_ms == 0
        total = sum(h.sink.played.values())
        assert total == pytest.approx(h.tts.duration_ms(GREETING) - 2 * 50  # 2 spaces
                                      + RESUME_REWIND_MS, abs=1)
        assert [e.segment_id for e in h.of("agent.speech_completed")] == list(texts)
        assert h.conv.context.messages()[1] == {"role": "assistant", "content": GREETING}
        assert h.llm.requests == [] and not h.of("user.turn_completed")
        await h.close()

    run_virtual(scenario())


@pytest.mark.parametrize("gap_ms", [60, 200])
def test_a_second_cough_right_after_the_resume_cuts_and_resumes_again(gap_ms: int) -> None:
    async def scenario() -> None:
        h = await start_call(greeting=GREETING, utterances=["", ""])
        await h.wait_for("agent.speech_started")
        await h.caller.pause(1500)
        await h.caller.speak(240)
        await h.wait_for("agent.false_interruption")
        await h.caller.pause(gap_ms)  # the re-sent audio is still playing
        await h.caller.speak(240)
        await h.wait_for("agent.false_interruption", count=2)
        await h.wait_for("agent.state_changed", lambda e: e.new_state == "listening")

        assert len(h.sink.clears) == 2 and not h.of("agent.speech_interrupted")
        texts = segment_texts(h)
        # The second hold cut the re-sent audio of the same sentence, which resumed again.
        assert any(len(chain(h, s)) == 3 for s in texts)
        assert all(heard_in_full(h, s) for s in texts) and h.sink.dropped_ms == 0
        total = sum(h.sink.played.values())
        assert total == pytest.approx(h.tts.duration_ms(GREETING) - 2 * 50
                                      + 2 * RESUME_REWIND_MS, abs=1)
        assert h.conv.context.messages()[1] == {"role": "assistant", "content": GREETING}
        await h.close()

    run_virtual(scenario())


def test_stop_wait_interrupts_clears_playout_and_truncates_to_what_was_heard() -> None:
    async def scenario() -> None:
        h = await start_call(greeting=GREETING, utterances=["stop, wait"],
                             llm_scripts=[["Sure, take your time."]])
        await h.wait_for("agent.speech_started")
        await h.caller.pause(2500)
        await h.caller.speak(700)
        intr = await h.wait_for("agent.speech_interrupted")
        onset = h.of("user.speech_started")[0].mono  # the true onset (VAD edges are backdated)

        assert len(h.sink.clears) == 1  # at the hold; the commit had nothing left to clear
        cleared_at = h.sink.clears[0][0]
        # Silent from the hold (the VAD's onset, 60 ms); committed after min_speech_ms
        # (300) with a recognised word.
        assert ONSET_MS - 1 <= intr.barge_in_ms <= ONSET_MS + 20
        assert intr.barge_in_ms == pytest.approx((cleared_at - onset) * 1000, abs=1)
        assert (intr.mono - onset) * 1000 >= 300
        texts = segment_texts(h)
        greeting_segments = [s for s in h.sink.segments if s in texts]
        assert not [t for t, seg in h.sink.play_log if seg in texts and t > cleared_at]

        heard = intr.heard_text
        assert heard == expected_heard(h, texts)
        assert heard and GREETING.startswith(heard) and len(heard) < len(GREETING)
        assert intr.interrupted_text == GREETING[len(heard):].strip()
        assert intr.segment_id in greeting_segments

        # The caller's words become their turn; the LLM sees only what was heard.
        turn = await h.wait_for("user.turn_completed")
        assert turn.text == "stop, wait"
        await h.wait_for("turn.completed")
        assert h.llm.requests[0]["messages"][1:] == [
            {"role": "assistant", "content": heard},
            {"role": "user", "content": "stop, wait"},
        ]
        item = h.conv.context.items[0]
        assert item.interrupted and item.generated == GREETING
        assert not h.of("agent.false_interruption")
        await h.close()

    run_virtual(scenario())


@pytest.mark.parametrize("streaming", [True, False], ids=["streaming-stt", "batch-stt"])
def test_mhm_never_interrupts(streaming: bool) -> None:
    async def scenario() -> None:
        stt = FakeSTT(["mhm", "uh huh yeah"], streaming=streaming)
        h = await start_call(greeting=GREETING, stt=stt)
        await h.wait_for("agent.speech_started")
        await h.caller.pause(800)
        await h.caller.speak(600)  # long enough to count as speech, but only a backchannel
        await h.wait_for("agent.false_interruption")
        await h.caller.pause(600)
        await h.caller.speak(900)
        await h.wait_for("agent.false_interruption", count=2)
        await h.wait_for("agent.state_changed", lambda e: e.new_state == "listening")

        assert [e.text for e in h.of("agent.false_interruption")] == ["mhm", "uh huh yeah"]
        assert not h.of("agent.speech_interrupted")
        # A backchannel cannot be told from a real interruption at its onset: each one
        # held (cleared) the agent, which then went on from where the caller stopped hearing.
        assert len(h.sink.clears) == 2
        texts = segment_texts(h)
        assert all(heard_in_full(h, s) for s in texts) and h.sink.dropped_ms == 0
        total = sum(h.sink.played.values())
        assert total == pytest.approx(h.tts.duration_ms(GREETING) - 2 * 50
                                      + 2 * RESUME_REWIND_MS, abs=1)
        assert not h.of("user.turn_completed") and h.llm.requests == []
        assert h.conv.context.messages()[1]["content"] == GREETING
        await h.caller.pause(1000)
        assert not h.of("user.turn_completed")  # late finals of the backchannel are dropped
        await h.close()

    run_virtual(scenario())


def test_interrupting_with_a_batch_stt_commits_on_the_flushed_final() -> None:
    async def scenario() -> None:
        # No interim words: the decision waits for the final requested at speech end.
        stt = FakeSTT(["no that's wrong"], streaming=False, latency_ms=150)
        h = await start_call(greeting=GREETING, stt=stt, llm_scripts=[["Sorry about that."]])
        await h.wait_for("agent.speech_started")
        await h.caller.pause(1000)
        await h.caller.speak(700)
        intr = await h.wait_for("agent.speech_interrupted")
        assert intr.heard_text and GREETING.startswith(intr.heard_text)
        turn = await h.wait_for("user.turn_completed")
        assert turn.text == "no that's wrong"
        assert stt.flushes == 1  # the barge-in flush served the end of turn too
        await h.close()

    run_virtual(scenario())


def test_sustained_speech_without_any_transcript_commits_at_the_window_end() -> None:
    async def scenario() -> None:
        s = ConversationSettings(
            interruption=InterruptionSettings(false_interruption_timeout_ms=1000)
        )
        stt = FakeSTT(["I have a question about my order"], streaming=False)
        h = await start_call(s, greeting=GREETING, stt=stt)
        await h.wait_for("agent.speech_started")
        await h.caller.pause(500)
        onset = h.conv._core.now()
        await h.caller.speak(2000)
        intr = await h.wait_for("agent.speech_interrupted")
        assert ONSET_MS - 1 <= intr.barge_in_ms <= ONSET_MS + 20  # silent from the hold
        edge = h.of("user.speech_started")[0].mono
        assert intr.mono - edge == pytest.approx(1.0, abs=0.025)  # committed at the window end
        assert (intr.mono - onset) < 1.1
        turn = await h.wait_for("user.turn_completed")
        assert turn.text == "I have a question about my order"
        await h.close()

    run_virtual(scenario())


def test_speech_while_the_agent_thinks_is_held_then_resumed_or_committed() -> None:
    async def scenario() -> None:
        llm = FakeLLM([["Our address is 5 Main Street."], ["Yes, we do."],
                       ["Yes, and it is free."]], ttft_ms=1500)
        h = await start_call(
            utterances=["Where are you?", "", "Do you have parking?", "and is it free"], llm=llm
        )
        await h.caller.speak(800)
        await h.wait_for("user.turn_completed")
        # A cough while the LLM is still thinking: held, then the answer comes normally.
        await h.caller.pause(300)
        await h.caller.speak(240)
        await h.wait_for("agent.false_interruption")
        done = await h.wait_for("turn.completed")
        assert done.agent_text == "Our address is 5 Main Street." and not done.interrupted
        # Real speech while it thinks the next time: that answer is dropped before any audio
        # and the caller's two turns reach the LLM as one message.
        await h.caller.speak(1000)
        await h.wait_for("user.turn_completed", count=2)
        await h.caller.pause(200)
        await h.caller.speak(800)
        intr = await h.wait_for("agent.speech_interrupted")
        assert intr.heard_text == ""
        await h.wait_for("turn.completed", count=3)
        assert llm.cancelled == 1
        last = llm.requests[-1]["messages"]
        assert [m["role"] for m in last] == ["system", "user", "assistant", "user"]
        assert last[-1]["content"] == "Do you have parking? and is it free"
        assert h.of("turn.completed")[1].interrupted
        assert h.of("turn.completed")[2].agent_text == "Yes, and it is free."
        await h.close()

    run_virtual(scenario())


def test_interruption_disabled_never_holds() -> None:
    async def scenario() -> None:
        s = ConversationSettings(interruption=InterruptionSettings(enabled=False))
        h = await start_call(s, greeting=GREETING, utterances=["stop right now please"],
                             llm_scripts=[["Okay."]])
        await h.wait_for("agent.speech_started")
        await h.caller.pause(500)
        await h.caller.speak(1200)
        turn = await h.wait_for("user.turn_completed")
        assert turn.text == "stop right now please"
        await h.wait_for("turn.completed")
        assert not h.of("agent.speech_interrupted") and h.sink.clears == []
        assert "paused" not in h.states()
        # The answer waited for the greeting to finish.
        first_answer = next(e for e in h.of("agent.speech_started") if e.text == "Okay.")
        greeting_done = h.of("agent.speech_completed")[2]
        assert first_answer.mono >= greeting_done.mono - 0.25
        await h.close()

    run_virtual(scenario())


DUCKED = ConversationSettings(interruption=InterruptionSettings(hold="duck"))


def played_gaps_ms(h: Harness, start: float, end: float) -> float:
    """The longest stretch between `start` and `end` in which the caller heard no agent audio."""
    ticks = [t for t, _seg in h.sink.play_log if start <= t <= end]
    edges = [start, *ticks, end]
    return max(b - a for a, b in pairwise(edges)) * 1000


def test_a_ducked_hold_keeps_the_agent_talking_softly_through_a_mhm() -> None:
    async def scenario() -> None:
        h = await start_call(DUCKED, greeting=GREETING, stt=FakeSTT(["mhm"]))
        await h.wait_for("agent.speech_started")
        await h.caller.pause(1000)
        await h.caller.speak(600)  # long enough to count as speech, but only a backchannel
        fi = await h.wait_for("agent.false_interruption")
        assert fi.text == "mhm" and h.of("user.backchannel")
        onset = h.of("user.speech_started")[0].mono
        await h.wait_for("agent.state_changed", lambda e: e.new_state == "listening")

        # The agent never went quiet: the far end's audio was re-sent ducked at the hold
        # (one clear), and the writer went on through the hold.
        assert len(h.sink.clears) == 1
        assert played_gaps_ms(h, onset, fi.mono + 0.5) <= 40
        assert not h.of("agent.speech_interrupted")
        texts = segment_texts(h)
        cut = next(s for s in texts if len(chain(h, s)) > 1)
        resumed = f"{cut}~1"
        # Ducked from the hold to the false interruption; full volume again after what the
        # sink held then (its 200 ms budget) played out.
        tone = h.tts.audio(texts[cut])
        peak = int(np.abs(tone).max())
        again = h.sink.samples(resumed)
        ducked_ms = (fi.mono - h.sink.clears[0][0]) * 1000 - 20
        assert np.abs(again[: int(ducked_ms * 16)]).max() <= peak * DUCK_GAIN + 1
        later = int((ducked_ms + 250) * 16)
        assert np.abs(again[later:]).max() > peak * DUCK_GAIN + 1
        # Every sentence was heard in full; the answer stays whole in the context.
        assert all(heard_in_full(h, s) for s in texts) and h.sink.dropped_ms == 0
        assert h.conv.context.messages()[1] == {"role": "assistant", "content": GREETING}
        assert not h.of("user.turn_completed") and h.llm.requests == []
        await h.close()

    run_virtual(scenario())


def test_a_ducked_hold_clears_the_agent_once_the_interruption_is_committed() -> None:
    async def scenario() -> None:
        h = await start_call(DUCKED, greeting=GREETING, utterances=["stop, wait"],
                             llm_scripts=[["Sure, take your time."]])
        await h.wait_for("agent.speech_started")
        await h.caller.pause(2500)
        await h.caller.speak(700)
        intr = await h.wait_for("agent.speech_interrupted")
        onset = h.of("user.speech_started")[0].mono

        # Ducked at the hold, cleared at the commit: after min_speech_ms (300) and a word.
        assert len(h.sink.clears) == 2
        ducked_at, committed_at = h.sink.clears[0][0], h.sink.clears[1][0]
        assert ONSET_MS - 1 <= (ducked_at - onset) * 1000 <= ONSET_MS + 20
        assert (committed_at - onset) * 1000 >= 300
        assert intr.barge_in_ms == pytest.approx((committed_at - onset) * 1000, abs=1)
        assert played_gaps_ms(h, onset, committed_at) <= 40  # it talked on, softly, till then
        texts = segment_texts(h)
        assert not [t for t, seg in h.sink.play_log if seg.split("~")[0] in texts
                    and t > committed_at + 0.001]
        # What the caller heard, ducked or not, is what the context keeps.
        heard = intr.heard_text
        assert heard and GREETING.startswith(heard) and heard == expected_heard(h, texts)
        turn = await h.wait_for("user.turn_completed")
        assert turn.text == "stop, wait"
        await h.wait_for("turn.completed")
        assert h.llm.requests[0]["messages"][1:] == [
            {"role": "assistant", "content": heard},
            {"role": "user", "content": "stop, wait"},
        ]
        await h.close()

    run_virtual(scenario())
