"""Live reconfiguration (`Conversation.update`), recorded audio (`play`) and the events that
say what the engine does: agent.speech_created, user.state_changed, session.updated."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from pipelines.settings import ConversationSettings, IdleSettings
from providers.base import ToolCall, ToolSpec
from tests.pipelines.fakes import FakeLLM, Pause, start_call
from tests.pipelines.virtual_clock import run_virtual

LOOKUP = ToolSpec("lookup_order", "Look up an order by id",
                  {"type": "object", "properties": {"order_id": {"type": "string"}}})
REFUND = ToolSpec("refund", "Refund an order", {"type": "object", "properties": {}})


def test_an_update_mid_answer_applies_from_the_next_answer_not_the_next_round() -> None:
    async def scenario() -> None:
        tool_started = asyncio.Event()

        async def executor(call: Any) -> Any:
            tool_started.set()
            await asyncio.sleep(0.5)
            return {"status": "shipped"}

        new_llm = FakeLLM([["Refunds take three days."]])
        h = await start_call(
            utterances=["Where is my order?", "Can I get a refund?"],
            llm_scripts=[["Let me check. ", ToolCall("c1", "lookup_order", {"order_id": "7"})],
                         ["It has shipped."]],
            tool_executor=executor, tools=[LOOKUP], prompt="Old prompt.",
        )
        await h.caller.speak(1000)
        await asyncio.wait_for(tool_started.wait(), 10)
        # Mid-answer (a tool is running): the answer's next round keeps what it began with.
        changed = h.conv.update(prompt="New prompt.", tools=[REFUND], llm=new_llm)
        assert changed == ["prompt", "tools", "llm"]
        (updated,) = h.of("session.updated")
        assert updated.fields == ["prompt", "tools", "llm"]
        await h.wait_for("turn.completed")
        assert len(h.llm.requests) == 2
        second_round = h.llm.requests[1]
        assert second_round["messages"][0] == {"role": "system", "content": "Old prompt."}
        assert second_round["tools"] == [LOOKUP]
        assert new_llm.requests == []

        # The next turn is answered by the new LLM, with the new prompt and tools.
        await h.caller.pause(500)
        await h.caller.speak(1000)
        done = await h.wait_for("turn.completed", count=2)
        assert done.agent_text == "Refunds take three days."
        (request,) = new_llm.requests
        assert request["messages"][0] == {"role": "system", "content": "New prompt."}
        assert request["tools"] == [REFUND]
        assert len(h.llm.requests) == 2
        await h.close()

    run_virtual(scenario())


def test_an_empty_tool_list_removes_the_tools_and_nothing_given_changes_nothing() -> None:
    async def scenario() -> None:
        h = await start_call(utterances=["Hello there."], tools=[LOOKUP])
        assert h.conv.update() == []
        assert h.conv.update(tools=[]) == ["tools"]
        await h.caller.speak(800)
        await h.wait_for("turn.completed")
        assert h.llm.requests[0]["tools"] is None
        assert h.llm.requests[0]["messages"][0]["content"] == "You are a helpful receptionist."
        assert [e.fields for e in h.of("session.updated")] == [["tools"]]
        await h.close()

    run_virtual(scenario())


def test_updates_before_one_answer_merge_field_by_field() -> None:
    async def scenario() -> None:
        h = await start_call(utterances=["Hi."])
        h.conv.update(prompt="First.", tools=[LOOKUP])
        h.conv.update(prompt="Second.")
        await h.caller.speak(600)
        await h.wait_for("turn.completed")
        request = h.llm.requests[0]
        assert request["messages"][0]["content"] == "Second."
        assert request["tools"] == [LOOKUP]
        await h.close()

    run_virtual(scenario())


def test_play_queues_recorded_audio_outside_the_context_and_reports_it_created() -> None:
    async def scenario() -> None:
        h = await start_call(greeting="Hello!")
        clip = np.full(16000, 1200, dtype=np.int16)  # 1 s at 16 kHz
        handle = h.conv.play(clip, sample_rate=16000)
        await handle
        assert not handle.interrupted
        created = [(e.source, e.text) for e in h.of("agent.speech_created")]
        assert created == [("greeting", "Hello!"), ("play", "")]
        assert h.of("agent.speech_created")[1].speech_id == handle.id
        assert h.conv.context.messages()[-1] == {"role": "assistant", "content": "Hello!"}
        with pytest.raises(ValueError):
            h.conv.play(np.zeros(0, dtype=np.int16), sample_rate=16000)
        # Cut by interrupt() like any speech.
        long = h.conv.play(np.full(16000 * 5, 1200, dtype=np.int16), sample_rate=16000)
        await h.wait_for("agent.speech_started", count=3)
        await asyncio.sleep(0.5)
        assert h.conv.interrupt() is long
        await long
        assert long.stop_reason == "interrupt"
        await h.close()

    run_virtual(scenario())


def test_replies_and_says_are_reported_when_created() -> None:
    async def scenario() -> None:
        h = await start_call(utterances=["What time is it?"],
                             llm_scripts=[[Pause(100), "Noon."]])
        await h.caller.speak(800)
        await h.wait_for("turn.completed")
        await h.conv.say("Anything else?")
        sources = [e.source for e in h.of("agent.speech_created")]
        assert sources == ["reply", "say"]
        reply = h.of("agent.speech_created")[0]
        started = h.types().index("agent.speech_started")
        assert h.events.index(reply) < started
        await h.close()

    run_virtual(scenario())


def test_user_state_follows_the_vad_and_goes_away_when_idle() -> None:
    async def scenario() -> None:
        idle = IdleSettings(timeout_s=3, max_prompts=1, prompt="Still there?", goodbye="Bye.")
        h = await start_call(ConversationSettings(idle=idle),
                             utterances=["Hello.", "I would like a table for two."])
        await h.caller.speak(600)
        await h.wait_for("turn.completed")
        await h.wait_for("user.idle")
        await h.wait_for("agent.speech_completed", count=2)  # the idle prompt was heard
        await h.caller.speak(600)
        await h.wait_for("turn.completed", count=2)
        changes = [(e.old_state, e.new_state) for e in h.of("user.state_changed")]
        assert changes == [("listening", "speaking"), ("speaking", "listening"),
                           ("listening", "away"), ("away", "speaking"),
                           ("speaking", "listening")]
        await h.close()

    run_virtual(scenario())


def test_turn_taking_settings_are_retuned_while_the_call_runs() -> None:
    async def scenario() -> None:
        h = await start_call(utterances=["Hello there."], llm_scripts=[["Hi!"]])
        settings = ConversationSettings.model_validate({
            "vad": {"stop_ms": 900}, "turn": {"max_wait_ms": 700},
            "interruption": {"min_words": 3}})
        h.conv.retune(settings)
        assert h.conv.settings.vad.stop_ms == 900
        assert h.endpointing.settings.max_wait_ms == 700
        assert h.vad._seg._stop_samples == 900 * 16
        assert h.conv._barge.policy.settings.min_words == 3
        assert h.of("session.updated")[-1].fields == ["turn_taking"]
        with pytest.raises(ValueError, match=r"vad\.engine"):
            h.conv.retune(ConversationSettings.model_validate({"vad": {"engine": "webrtc"}}))
        await h.conv.stop()

    run_virtual(scenario())
