"""llama.cpp with SmolLM2-135M-Instruct: streaming answers, cancellation, usage, and the bound on
concurrent generations."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_cpp", reason="the `local` extra (llama-cpp-python) is not installed")

from app import model_store
from providers import registry
from providers.base import ProviderError, TextDelta, ToolCall, ToolSpec, Usage
from providers.llm.llama_cpp import LlamaCppConfig, LlamaCppLLM
from tests.providers.conftest import Recorder, make_ctx

# The small model: these tests are about the adapter and its workers, not answer quality.
SMOL = model_store.SMOLLM2.name

SYSTEM = ("You are a friendly receptionist at a dental clinic. The clinic is open from 9am to "
          "5pm, Monday to Friday. Answer in one short sentence.")


@pytest.fixture(scope="session")
def smollm_dir() -> Path:
    d = Path(os.environ.get("PHONEBOOTH_TEST_MODELS_DIR", "~/.cache/phonebooth/models"))
    d = d.expanduser()
    model_store.fetch(d, [model_store.SMOLLM2])
    return d


@pytest.fixture
def llm_ctx(smollm_dir: Path, shared: dict[str, Any], recorder: Recorder) -> Any:
    return make_ctx(smollm_dir, shared, recorder)


def ask(question: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


async def test_streams_an_answer_with_usage(llm_ctx, recorder) -> None:
    llm = LlamaCppLLM(LlamaCppConfig(model=SMOL), llm_ctx)
    events = [e async for e in llm.stream(ask("What are your opening hours?"))]
    deltas = [e for e in events if isinstance(e, TextDelta)]
    usage = {e.metric: e.quantity for e in events if isinstance(e, Usage)}
    answer = "".join(d.text for d in deltas)
    assert answer.strip() and len(deltas) > 1, answer  # streamed token by token
    assert isinstance(events[-1], Usage)  # usage comes last
    assert usage["input_tokens"] > 30  # the system prompt alone is longer than that
    assert usage["output_tokens"] == len(deltas)
    assert llm.model_name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert len(recorder.metric_values("ttfb_ms")) == 1
    assert recorder.usage == []  # LLM usage travels in the stream, not also via on_usage


async def test_closing_the_stream_stops_generation(llm_ctx) -> None:
    llm = LlamaCppLLM(LlamaCppConfig(model=SMOL, max_tokens=400, temperature=0.8), llm_ctx)
    question = ask("Tell me a very long story about the clinic and its history.")
    probe = [e async for e in llm.stream(question, settings={"max_tokens": 1})]
    prompt = next(e.quantity for e in probe if isinstance(e, Usage) and e.metric == "input_tokens")
    it = llm.stream(question)
    for _ in range(3):
        assert isinstance(await anext(it), TextDelta)
    await it.aclose()
    pool = llm.pool()
    assert pool.in_use == 0  # the worker is back in the pool as soon as the consumer leaves
    slot = llm._last_slot
    assert slot is not None
    for _ in range(500):  # the worker reports the stopped job once it has stopped
        if slot.worker.last_stats.get("cancelled"):
            break
        await asyncio.sleep(0.01)
    stats = slot.worker.last_stats
    assert stats["cancelled"], stats
    # Stopped right after the consumer left: within a few tokens (those in the pipe when the
    # cancel arrived) of the 3 read, where 400 were allowed.
    assert stats["n_tokens"] - prompt <= 3 + 16 + 1, stats


async def test_concurrent_generations_are_bounded(smollm_dir, recorder) -> None:
    ctx = make_ctx(smollm_dir, {}, recorder)  # a fresh process-wide pool for this bound
    llms = [LlamaCppLLM(LlamaCppConfig(model=SMOL, max_concurrent=2, max_tokens=12), ctx)
            for _ in range(5)]

    async def one(llm: LlamaCppLLM, q: str) -> str:
        return "".join([e.text async for e in llm.stream(ask(q)) if isinstance(e, TextDelta)])

    questions = ["Are you open on Monday?", "Where are you?", "Do you take new patients?",
                 "Can I book a cleaning?", "Is parking free?"]
    answers = await asyncio.gather(*(one(llm, q) for llm, q in zip(llms, questions, strict=True)))
    pool = llms[0].pool()
    assert all(a.strip() for a in answers)
    assert pool.peak_in_use == 2  # five calls, never more than two generations at once
    assert pool.in_use == 0


async def test_waiting_for_a_context_can_be_cancelled(smollm_dir, recorder) -> None:
    ctx = make_ctx(smollm_dir, {}, recorder)
    busy = LlamaCppLLM(LlamaCppConfig(model=SMOL, max_concurrent=1, max_tokens=200), ctx)
    waiting = LlamaCppLLM(LlamaCppConfig(model=SMOL, max_concurrent=1, max_tokens=8), ctx)
    it = busy.stream(ask("Describe every service you offer in detail."))
    await anext(it)  # holds the only context

    async def wait_turn() -> list[Any]:
        return [e async for e in waiting.stream(ask("Hi?"))]

    task = asyncio.create_task(wait_turn())
    await asyncio.sleep(0.1)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await it.aclose()
    # The context is not lost: the next request gets it.
    assert [e async for e in waiting.stream(ask("Hi?")) if isinstance(e, TextDelta)]


async def test_long_history_is_trimmed_to_fit_the_context(llm_ctx) -> None:
    llm = LlamaCppLLM(LlamaCppConfig(model=SMOL, n_ctx=512, max_tokens=16), llm_ctx)
    history: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    for i in range(40):
        history.append({"role": "user", "content": f"Question {i}: what about day {i}?"})
        history.append({"role": "assistant", "content": f"Day {i} is a normal working day."})
    history.append({"role": "user", "content": "And today?"})
    events = [e async for e in llm.stream(history)]
    usage = {e.metric: e.quantity for e in events if isinstance(e, Usage)}
    assert any(isinstance(e, TextDelta) for e in events)
    assert usage["input_tokens"] <= 512 - 16


async def test_tool_messages_are_mapped_for_a_model_without_tools(llm_ctx) -> None:
    llm = LlamaCppLLM(LlamaCppConfig(model=SMOL, max_tokens=24), llm_ctx)
    history = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Is Dr. Smith in tomorrow?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"id": "c1", "name": "lookup_schedule", "arguments": {"who": "Smith"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "Dr. Smith works tomorrow 9-12."},
    ]
    tools = [ToolSpec("lookup_schedule", "Look up a dentist's schedule")]
    events = [e async for e in llm.stream(history, tools)]
    assert not any(isinstance(e, ToolCall) for e in events)  # tools not offered by default
    assert "".join(e.text for e in events if isinstance(e, TextDelta)).strip()


async def test_missing_model_is_a_provider_error(tmp_path, recorder) -> None:
    ctx = make_ctx(tmp_path, {}, recorder)
    llm = LlamaCppLLM(LlamaCppConfig(model=SMOL), ctx)
    with pytest.raises(ProviderError, match="model file not found"):
        async for _ in llm.stream(ask("Hi")):
            pass


def test_config_and_model_files() -> None:
    cfg = registry.parse_config("llm", "llama_cpp", {"model": "/models/other.gguf",
                                                      "n_threads": 2})
    assert LlamaCppLLM.model_files(cfg) == ["/models/other.gguf"]
    # The default is the model `phonebooth models fetch` gets without names.
    assert LlamaCppLLM.model_files(LlamaCppConfig()) == [model_store.QWEN25_05B.name]
    with pytest.raises(registry.ValidationError):
        registry.parse_config("llm", "llama_cpp", {"max_concurrent": 0})
