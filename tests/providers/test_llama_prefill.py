"""llama.cpp for voice: the prompt prefill that makes the first answer as quick as later ones,
and ending answers after a few sentences (SmolLM2-135M-Instruct, real model)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp", reason="the `local` extra (llama-cpp-python) is not installed")

from app import model_store
from providers.base import TextDelta, Usage
from providers.llm.llama_cpp import LlamaCppConfig, LlamaCppLLM
from providers.llm.sentence_limit import SentenceLimit
from tests.providers.conftest import make_ctx
from tests.providers.test_llama_cpp import SYSTEM, ask

# The small model: these tests are about the adapter and its workers, not answer quality.
SMOL = model_store.SMOLLM2.name


@pytest.fixture(scope="module")
def smollm_dir() -> Path:
    d = Path(os.environ.get("PHONEBOOTH_TEST_MODELS_DIR", "~/.cache/phonebooth/models"))
    d = d.expanduser()
    model_store.fetch(d, [model_store.SMOLLM2])
    return d


GREETING = "Hello, thanks for calling the clinic. How can I help you?"
START = [{"role": "system", "content": SYSTEM}, {"role": "assistant", "content": GREETING}]


async def settle(llm: LlamaCppLLM) -> None:
    pool = llm.pool()
    for _ in range(500):
        if pool.in_use == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("a context was never returned to the pool")


async def test_prefill_leaves_only_the_callers_words_to_evaluate(smollm_dir, recorder) -> None:
    llm = LlamaCppLLM(LlamaCppConfig(model=SMOL, max_tokens=6, temperature=0.0),
                      make_ctx(smollm_dir, {}, recorder))
    assert await llm.prefill(START) is True
    await settle(llm)
    slot = llm._last_slot
    assert slot is not None
    events = [e async for e in llm.stream([*START, {"role": "user",
                                                    "content": "When are you open?"}])]
    prompt = next(e.quantity for e in events if isinstance(e, Usage)
                  and e.metric == "input_tokens")
    assert any(isinstance(e, TextDelta) for e in events)
    assert prompt > 60  # the whole prompt: system prompt, greeting, question
    # Only the caller's turn (and the template's markup around it) was evaluated: the worker
    # counts the tokens of the job's first llama.cpp evaluation.
    assert llm._last_slot is slot  # the same worker, holding the prefilled context
    evaluated = slot.worker.last_stats["prompt_evaluated"]
    assert 0 < evaluated <= 16, (slot.worker.last_stats, prompt)


async def test_prefill_never_waits_for_a_busy_context(smollm_dir, recorder) -> None:
    ctx = make_ctx(smollm_dir, {}, recorder)
    busy = LlamaCppLLM(LlamaCppConfig(model=SMOL, max_concurrent=1, max_tokens=200), ctx)
    other = LlamaCppLLM(LlamaCppConfig(model=SMOL, max_concurrent=1), ctx)
    it = busy.stream(ask("Describe every service you offer in detail."))
    await anext(it)  # holds the only context
    try:
        assert await asyncio.wait_for(other.prefill(START), 5) is False
    finally:
        await it.aclose()
    await settle(busy)
    assert await other.prefill(START) is True
    await settle(other)


async def test_answers_end_after_max_sentences(smollm_dir, recorder) -> None:
    cfg = LlamaCppConfig(model=SMOL, max_sentences=1, max_tokens=150, temperature=0.0)
    llm = LlamaCppLLM(cfg, make_ctx(smollm_dir, {}, recorder))
    events = [e async for e in llm.stream(ask("Tell me everything about the clinic."))]
    answer = "".join(e.text for e in events if isinstance(e, TextDelta))
    output = next(e.quantity for e in events if isinstance(e, Usage)
                  and e.metric == "output_tokens")
    assert answer.strip() and output < 150, answer
    # Exactly one sentence: it ends the text, and nothing before it ended one.
    passed, complete = SentenceLimit(1).feed(answer + " And")
    assert complete and passed == answer, answer


def test_sentence_limit_counts_sentences_not_abbreviations() -> None:
    def cut(text: str, n: int, step: int) -> tuple[str, bool]:
        limit, out = SentenceLimit(n), ""
        for i in range(0, len(text), step):
            part, done = limit.feed(text[i : i + step])
            out += part
            if done:
                return out, True
        return out, False

    text = "We open at 9 a.m. on weekdays. Dr. Lee is in! Ask J. Smith? Bye."
    for step in (1, 2, 5, len(text)):
        assert cut(text, 1, step) == ("We open at 9 a.m. on weekdays.", True)
        assert cut(text, 2, step) == ("We open at 9 a.m. on weekdays. Dr. Lee is in!", True)
        assert cut(text, 3, step) == (text[: text.index("?") + 1], True)
        assert cut(text, 4, step) == (text, False)  # the last end is never confirmed
    assert cut('She said "hi." Then left.', 1, 3) == ('She said "hi."', True)
    assert cut("... well. Okay.", 1, 1) == ("... well.", True)
    with pytest.raises(ValueError):
        SentenceLimit(0)
