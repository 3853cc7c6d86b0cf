"""llama.cpp out of the server process: a worker killed mid-reply (SIGKILL, SIGSEGV) fails only
the generation it was running, at once; the pool replaces it, backs off when workers keep dying,
and says why it cannot serve. Real workers, real SmolLM2-135M-Instruct."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_cpp", reason="the `local` extra (llama-cpp-python) is not installed")

from app import model_store
from providers.base import ProviderError, TextDelta, Usage
from providers.fallback import Cooldowns, FallbackLLM
from providers.llm.llama_cpp import LlamaCppConfig, LlamaCppLLM
from providers.llm.llama_pool import CRASH_LOOP, LlamaPool, backoff_s, pools_problem
from tests.providers.conftest import Recorder, make_ctx
from tests.providers.test_llama_cpp import ask

# The small model: these tests are about the adapter and its workers, not answer quality.
SMOL = model_store.SMOLLM2.name

STORY = "Tell me a very long story about the clinic and its history."
# How soon the generation a crash interrupted must fail (the bound for the apology).
FAIL_WITHIN_S = 2.0


@pytest.fixture(scope="module")
def smollm_dir() -> Path:
    d = Path(os.environ.get("PHONEBOOTH_TEST_MODELS_DIR", "~/.cache/phonebooth/models"))
    d = d.expanduser()
    model_store.fetch(d, [model_store.SMOLLM2])
    return d


async def until(pred: Any, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


class CannedLLM:
    """A second LLM for the fallback chain (an in-process fake: nothing native to crash)."""

    name = "canned"

    async def stream(self, messages: Any, tools: Any = None,
                     settings: Any = None) -> Any:
        yield TextDelta("Let me check that for you.")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])
async def test_a_worker_dying_mid_reply_fails_only_its_own_generation(
        smollm_dir: Path, recorder: Recorder, sig: signal.Signals) -> None:
    ctx = make_ctx(smollm_dir, {}, recorder)
    cfg = LlamaCppConfig(model=SMOL, max_concurrent=2, max_tokens=300, temperature=0.8,
                         seed=1)
    doomed, other = LlamaCppLLM(cfg, ctx), LlamaCppLLM(cfg, ctx)
    pool = doomed.pool()
    a, b = doomed.stream(ask(STORY)), other.stream(ask(STORY))
    for it in (a, b):
        assert isinstance(await anext(it), TextDelta)
    assert doomed._last_slot is not None and other._last_slot is not None
    victim = doomed._last_slot.worker
    assert victim is not other._last_slot.worker and victim.pid != os.getpid()
    assert victim.pid is not None

    os.kill(victim.pid, sig)
    killed_at = time.monotonic()
    with pytest.raises(ProviderError) as err:
        while True:
            await anext(a)
    failed_after = time.monotonic() - killed_at
    assert failed_after < FAIL_WITHIN_S, failed_after
    assert err.value.code == "worker_died" and err.value.retryable
    assert sig.name in str(err.value), str(err.value)

    # The other generation, in its own worker, runs to its end untouched.
    rest = [e async for e in b]
    assert any(isinstance(e, TextDelta) for e in rest)
    assert isinstance(rest[-1], Usage)

    # The dead worker is replaced (no backoff for a first death) and serves the next request.
    await until(lambda: pool.restarts == 1)
    assert pool.problem() is None
    events = [e async for e in doomed.stream(ask("Are you open on Monday?"),
                                             settings={"max_tokens": 8})]
    assert any(isinstance(e, TextDelta) for e in events)
    assert pool.in_use == 0 and pool.capacity == 2


async def test_the_fallback_llm_answers_when_the_worker_dies_before_the_first_token(
        smollm_dir: Path, recorder: Recorder) -> None:
    ctx = make_ctx(smollm_dir, {}, recorder)
    llm = LlamaCppLLM(LlamaCppConfig(model=SMOL, max_concurrent=1, max_tokens=8), ctx)
    await llm.warm()
    pool = llm.pool()
    switches: list[tuple[str, str, str, BaseException]] = []
    chain = FallbackLLM([(llm, 10.0), (CannedLLM(), 10.0)],
                        on_switch=lambda *a: switches.append(a), cooldowns=Cooldowns())
    # A long prompt: its evaluation keeps the worker busy well before the first token.
    long_prompt = [{"role": "system", "content": "You answer the phone. " * 250},
                   {"role": "user", "content": "Hello?"}]
    it = chain.stream(long_prompt)
    first = asyncio.ensure_future(anext(it))
    await until(lambda: pool.in_use == 1, 10)
    assert llm._last_slot is not None and llm._last_slot.worker.pid is not None
    os.kill(llm._last_slot.worker.pid, signal.SIGSEGV)
    killed_at = time.monotonic()
    event = await first
    assert time.monotonic() - killed_at < FAIL_WITHIN_S
    assert event == TextDelta("Let me check that for you.")
    assert [(k, f, t) for k, f, t, _ in switches] == [("llm", "llama_cpp", "canned")]
    assert "SIGSEGV" in str(switches[0][3])
    assert [e async for e in it] == []  # the canned answer was all


async def test_workers_that_keep_dying_back_off_and_are_reported(
        smollm_dir: Path, recorder: Recorder) -> None:
    assert [backoff_s(n) for n in range(1, 8)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    shared: dict[str, Any] = {}
    llm = LlamaCppLLM(LlamaCppConfig(model=SMOL, max_concurrent=1, max_tokens=4), make_ctx(
        smollm_dir, shared, recorder))
    await llm.warm()
    pool = llm.pool()
    for deaths in range(1, CRASH_LOOP + 1):
        slot = llm._last_slot
        assert slot is not None and slot.worker.pid is not None
        await until(lambda: slot.worker in pool._workers)  # noqa: B023 - awaited right here
        os.kill(slot.worker.pid, signal.SIGKILL)
        await until(lambda: pool.last_death is not None and pool._failures == deaths)  # noqa: B023
        if deaths == 1:
            await until(lambda: pool.restarts == 1)  # at once
            await llm.warm()  # picks up the replacement
            continue
        # Later deaths back off: meanwhile a request fails at once instead of waiting.
        started = time.monotonic()
        with pytest.raises(ProviderError, match=r"next llama\.cpp worker starts in"):
            async for _ in llm.stream(ask("Hi")):
                pass
        assert time.monotonic() - started < 0.5
        if deaths < CRASH_LOOP:
            assert pool.problem() is None
            await until(lambda: pool.restarts == deaths, backoff_s(deaths) + 30)  # noqa: B023
            await llm.warm()
    problem = pools_problem(shared)
    assert problem is not None and "keep crashing" in problem and "SIGKILL" in problem
    pool.close()


async def test_a_worker_that_cannot_start_says_why(tmp_path: Path, recorder: Recorder) -> None:
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    shared: dict[str, Any] = {}
    llm = LlamaCppLLM(LlamaCppConfig(model="broken.gguf"), make_ctx(tmp_path, shared, recorder))
    with pytest.raises(ProviderError, match=r"could not load broken\.gguf"):
        await llm.warm()
    problem = pools_problem(shared)
    assert problem is not None and "cannot start" in problem and "broken.gguf" in problem
    assert llm.pool().in_use == 0 and not llm.pool()._workers


async def test_closing_the_pool_stops_its_workers(smollm_dir: Path, recorder: Recorder) -> None:
    llm = LlamaCppLLM(LlamaCppConfig(model=SMOL, max_concurrent=1),
                      make_ctx(smollm_dir, {}, recorder))
    await llm.warm()
    pool: LlamaPool = llm.pool()
    assert llm._last_slot is not None
    worker = llm._last_slot.worker
    assert worker.proc is not None
    pool.close()
    assert worker.proc.poll() is not None  # gone, and not reported as a crash
    assert pool.restarts == 0 and pool.last_death is None
    with pytest.raises(ProviderError, match="shut down"):
        await pool.acquire()
