"""Tool calls: the LLM asks, the injected executor answers, the LLM continues."""

from __future__ import annotations

import asyncio
from typing import Any

from pipelines.settings import ConversationSettings
from providers.base import ToolCall, ToolSpec, Usage
from tests.pipelines.fakes import start_call
from tests.pipelines.virtual_clock import run_virtual

LOOKUP = ToolSpec("lookup_order", "Look up an order by id",
                  {"type": "object", "properties": {"order_id": {"type": "string"}}})


def test_a_tool_call_turn_round_trips() -> None:
    async def scenario() -> None:
        seen: list[Any] = []

        async def executor(call: Any) -> Any:
            seen.append(call)
            await asyncio.sleep(0.3)
            return {"status": "shipped", "eta": "Friday"}

        h = await start_call(
            utterances=["Where is my order forty two?"],
            llm_scripts=[
                ["Let me check that. ", ToolCall("c1", "lookup_order", {"order_id": "42"}),
                 Usage("fakellm", "m", "output_tokens", 12)],
                ["It has shipped and arrives Friday."],
            ],
            tool_executor=executor, tools=[LOOKUP],
        )
        await h.caller.speak(1200)
        done = await h.wait_for("turn.completed")
        assert [c.name for c in seen] == ["lookup_order"] and seen[0].arguments == {
            "order_id": "42"
        }
        called, completed = h.of("tool.called")[0], h.of("tool.completed")[0]
        assert called.call_id == "c1" and called.arguments == {"order_id": "42"}
        assert completed.result == {"status": "shipped", "eta": "Friday"}
        assert completed.latency_ms == 300
        usage = h.of("session.usage")[0]
        assert (usage.kind, usage.metric, usage.quantity) == ("llm", "output_tokens", 12)

        assert h.llm.requests[0]["tools"] == [LOOKUP]
        second = h.llm.requests[1]["messages"]
        assert second[1:] == [
            {"role": "user", "content": "Where is my order forty two?"},
            {"role": "assistant", "content": "Let me check that.",
             "tool_calls": [{"id": "c1", "name": "lookup_order",
                             "arguments": {"order_id": "42"}}]},
            {"role": "tool", "content": '{"status": "shipped", "eta": "Friday"}',
             "tool_call_id": "c1", "name": "lookup_order"},
        ]
        assert done.agent_text == "Let me check that. It has shipped and arrives Friday."
        assert h.conv.context.messages()[-1] == {
            "role": "assistant", "content": "It has shipped and arrives Friday."
        }
        await h.close()

    run_virtual(scenario())


def test_failing_and_missing_tools_answer_the_llm_with_an_error() -> None:
    async def scenario() -> None:
        async def executor(call: Any) -> Any:
            raise RuntimeError("CRM unreachable")

        h = await start_call(
            utterances=["Check my balance"],
            llm_scripts=[[ToolCall("c1", "balance", {})], ["Sorry, I can't reach that now."]],
            tool_executor=executor,
        )
        await h.caller.speak(800)
        await h.wait_for("turn.completed")
        failed = h.of("tool.failed")[0]
        assert failed.name == "balance" and "CRM unreachable" in failed.error
        tool_msg = h.llm.requests[1]["messages"][-1]
        assert tool_msg["role"] == "tool" and "CRM unreachable" in tool_msg["content"]
        await h.close()

    run_virtual(scenario())


def test_default_executor_says_no_tools() -> None:
    async def scenario() -> None:
        h = await start_call(utterances=["Book it"],
                             llm_scripts=[[ToolCall("c9", "book", {})], ["I can't book."]])
        await h.caller.speak(800)
        await h.wait_for("turn.completed")
        tool_msg = h.llm.requests[1]["messages"][-1]
        assert "no tools" in tool_msg["content"]
        await h.close()

    run_virtual(scenario())


def test_tool_rounds_are_bounded_and_the_last_round_offers_no_tools() -> None:
    async def scenario() -> None:
        s = ConversationSettings(max_tool_rounds=2)
        h = await start_call(
            s, utterances=["Go"],
            llm_scripts=[[ToolCall("a", "again", {})], [ToolCall("b", "again", {})],
                         ["Done."]],
            tools=[LOOKUP],
        )
        await h.caller.speak(600)
        done = await h.wait_for("turn.completed")
        assert done.agent_text == "Done."
        assert [r["tools"] for r in h.llm.requests] == [[LOOKUP], [LOOKUP], None]
        await h.close()

    run_virtual(scenario())


def test_barge_in_during_a_tool_cancels_it_and_keeps_the_context_valid() -> None:
    async def scenario() -> None:
        cancelled: list[str] = []

        async def slow_executor(call: Any) -> Any:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(call.id)
                raise
            return "never"

        h = await start_call(
            utterances=["Where is my order?", "never mind"],
            llm_scripts=[["One moment please. ", ToolCall("c1", "lookup_order", {})],
                         ["No problem."]],
            tool_executor=slow_executor,
        )
        await h.caller.speak(800)
        await h.wait_for("tool.called")
        await h.caller.pause(2000)  # the agent's "One moment please." has played out
        await h.caller.speak(800)
        await h.wait_for("agent.speech_interrupted")
        done = await h.wait_for("turn.completed", count=2)
        assert cancelled == ["c1"]
        assert done.agent_text == "No problem."
        msgs = h.llm.requests[-1]["messages"]
        assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "user"]
        assert msgs[2]["tool_calls"][0]["id"] == "c1"
        assert msgs[2]["content"] == "One moment please."
        assert msgs[3]["tool_call_id"] == "c1" and "cancelled" in msgs[3]["content"]
        await h.close()

    run_virtual(scenario())


def test_a_tool_may_hang_up_the_call_after_the_goodbye_plays() -> None:
    async def scenario() -> None:
        holder: dict[str, Any] = {}

        async def executor(call: Any) -> Any:
            holder["h"].conv.hangup("agent_hangup")
            return "ok"

        h = await start_call(
            utterances=["That's all, thanks"],
            llm_scripts=[["Goodbye! ", ToolCall("e", "end_call", {})], ["Should not be said."]],
            tool_executor=executor,
        )
        holder["h"] = h
        await h.caller.speak(800)
        assert await h.conv.wait_ended() == "agent_hangup"
        spoken = [e.text for e in h.of("agent.speech_completed")]
        assert spoken == ["Goodbye!"]
        assert len(h.llm.requests) == 1
        await h.close()

    run_virtual(scenario())
