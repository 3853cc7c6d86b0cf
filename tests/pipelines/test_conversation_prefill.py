"""The LLM prefill: an LLM offering `prefill` (llama.cpp's prompt cache) gets the start of the
conversation while the greeting plays, exactly as the first answer's request will begin."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.pipelines.fakes import FakeLLM, start_call
from tests.pipelines.virtual_clock import run_virtual

GREETING = "Hello, Phonebooth Dental, how can I help you?"


class PrefillingLLM(FakeLLM):
    def __init__(self, *args: Any, fail: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prefills: list[tuple[float, list[dict[str, Any]], Any]] = []
        self.fail = fail

    async def prefill(self, messages: list[dict[str, Any]], tools: Any = None) -> bool:
        self.prefills.append((asyncio.get_running_loop().time(), list(messages), tools))
        if self.fail:
            raise RuntimeError("no context free")
        return True


def test_prefill_runs_once_after_the_greeting_starts_with_the_first_answers_prefix() -> None:
    async def scenario() -> None:
        llm = PrefillingLLM([["We are open nine to five."]])
        h = await start_call(greeting=GREETING, llm=llm, utterances=["when are you open"])
        started = await h.wait_for("agent.speech_started")
        await h.wait_for("agent.speech_completed")
        assert len(llm.prefills) == 1
        at, messages, tools = llm.prefills[0]
        assert at >= started.mono  # not competing with the greeting's synthesis
        assert tools is None
        await h.caller.speak(1000)
        await h.wait_for("turn.completed")
        request = llm.requests[0]["messages"]
        # The answer's request starts exactly with what was prefilled, then the caller's turn.
        assert request[: len(messages)] == messages
        assert [m["role"] for m in messages] == ["system", "assistant"]
        assert messages[1]["content"] == GREETING
        assert request[len(messages)]["role"] == "user"
        assert len(llm.prefills) == 1
        await h.close()

    run_virtual(scenario())


def test_prefill_without_a_greeting_starts_at_once() -> None:
    async def scenario() -> None:
        llm = PrefillingLLM()
        h = await start_call(llm=llm)
        await asyncio.sleep(0.05)
        assert [[m["role"] for m in p[1]] for p in llm.prefills] == [["system"]]
        await h.close()

    run_virtual(scenario())


def test_a_failing_prefill_is_not_a_call_error() -> None:
    async def scenario() -> None:
        llm = PrefillingLLM(fail=True)
        h = await start_call(greeting=GREETING, llm=llm)
        await h.wait_for("agent.speech_completed")
        assert len(llm.prefills) == 1
        assert h.of("session.error") == []
        await h.close()

    run_virtual(scenario())
