"""A llama.cpp worker crash in the middle of a live call (issue 12): the real server and the
offline demo agent take a simulated Plivo call; while the agent's answer is being generated its
worker is killed with SIGSEGV. The caller hears the apology within 2 s, a `session.error` event
says why, the worker is replaced, the next question is answered and /readyz stays ready; the
server (and so every other call on it) never notices beyond that one answer. And /readyz
says in words when a worker cannot start. A Piper worker killed (SIGKILL) while it renders the
greeting costs a pause: the greeting goes on from a replacement worker, and the call with it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import model_store
from app.simulator.far_end import PlivoSimulator
from pipelines.settings import ConversationSettings
from providers.native.pool import pools
from tests.e2e.test_local_call import _MISSING, RATE
from tests.e2e.test_local_call import local_models_dir as local_models_dir
from tests.e2e.test_local_call import offline_server as offline_server
from tests.e2e.test_local_call import plivo_rest as plivo_rest
from tests.fakes.plivo_rest import FakePlivoRest
from tests.live_server import LiveServer
from tests.speech import synthesize

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(_MISSING), reason="the embedded stack needs the `local` extra "
                       f"(missing: {', '.join(_MISSING)})"),
]

QUESTIONS = ("What are your opening hours?", "Where are you located?")


async def until(pred: Any, within_s: float, why: Any = "") -> None:
    deadline = time.monotonic() + within_s
    while not pred():
        assert time.monotonic() < deadline, f"condition not reached in time {why and why()}"
        await asyncio.sleep(0.001)


async def test_a_worker_killed_mid_reply_costs_one_answer_not_the_call(
        offline_server: LiveServer, plivo_rest: FakePlivoRest) -> None:
    state = offline_server.state
    sub = state.events.bus.subscribe(None, maxsize=100_000)
    seen: list[tuple[float, Any]] = []  # (monotonic time received, envelope)

    def drain() -> list[Any]:
        while (env := sub.get_nowait()) is not None:
            seen.append((time.monotonic(), env))
        return [e for _, e in seen]

    apology = ConversationSettings().apology
    audio = {q: synthesize(q, RATE) for q in QUESTIONS}
    sim = PlivoSimulator(offline_server.base_url, plivo_rest.auth_token)
    async with sim.call(to="", agent="demo") as call:
        assert await call.wait_agent_quiet(quiet_s=0.6, within_s=30, speak_within_s=15)
        pool = pools(state.calls.shared, "llama_cpp")[0]
        # The prefill of the system prompt (started with the greeting) is over, so the busy
        # worker below is the answer's: a first turn waits for its own prefill, and on a loaded
        # machine the prefill of the demo prompt can outlast the greeting and the question.
        await until(lambda: not pool.busy_workers(), 60)
        call.say(audio[QUESTIONS[0]], RATE)
        await call.wait_said(within_s=30)
        # The answer to the committed turn is being generated: its worker dies. (An answer
        # started early on an interim transcript may be thrown away for the final's words; its
        # worker dying would cost the caller nothing.)
        await until(lambda: any(e.type == "user.turn_completed" for e in drain()), 30)
        await until(lambda: bool(pool.busy_workers()), 30)
        victim = pool.busy_workers()[0]
        assert victim.pid is not None and victim.pid != os.getpid()
        drain()  # what came before the kill is stamped before it
        os.kill(victim.pid, signal.SIGSEGV)
        killed_at = time.monotonic()

        def spoken_apology() -> list[float]:
            # The apology is spoken sentence by sentence: its first one starting is what counts.
            return [t for t, e in seen if e.type == "agent.speech_started"
                    and e.event.text and apology.startswith(e.event.text) and t >= killed_at]

        def after_kill() -> list[str]:
            return [f"{e.type} {getattr(e.event, 'text', getattr(e.event, 'message', ''))!r}"
                    for t, e in seen if t >= killed_at - 0.5]

        await until(lambda: bool(drain() and spoken_apology()), 10, after_kill)
        delay = spoken_apology()[0] - killed_at
        print(f"apology started {delay * 1000:.0f} ms after the worker was killed")
        errors = [e.event for e in drain() if e.type == "session.error"]
        assert len(errors) == 1, errors
        assert errors[0].code == "worker_died" and errors[0].stage == "llm"
        assert "SIGSEGV" in errors[0].message, errors[0].message

        # The call goes on: the apology ends, the next question gets a real answer.
        assert await call.wait_agent_quiet(quiet_s=1.0, within_s=30, speak_within_s=5,
                                           since=killed_at)
        await until(lambda: pool.restarts >= 1, 30)
        asked_at = time.monotonic()
        call.say(audio[QUESTIONS[1]], RATE)
        await call.wait_said(within_s=30)
        # The new worker reads the whole prompt first: ~12 s on a slow CPU.
        assert await call.wait_agent_quiet(quiet_s=1.0, within_s=60, speak_within_s=30,
                                           since=asked_at)
        drain()
        answers = [e.event.text for t, e in seen if e.type == "agent.speech_started"
                   and t >= asked_at]
        assert answers and not any(apology.startswith(a) for a in answers), answers

    async with httpx.AsyncClient(base_url=offline_server.base_url) as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["native_workers"] == "ok"
    assert not [e for e in drain() if e.type == "session.error"][1:]
    sub.close()


async def test_a_piper_worker_killed_mid_greeting_costs_a_pause_not_the_call(
        offline_server: LiveServer, plivo_rest: FakePlivoRest) -> None:
    state = offline_server.state
    sub = state.events.bus.subscribe(None, maxsize=100_000)
    seen: list[tuple[float, Any]] = []

    def drain() -> list[Any]:
        while (env := sub.get_nowait()) is not None:
            seen.append((time.monotonic(), env))
        return [e for _, e in seen]

    apology = ConversationSettings().apology
    audio = synthesize(QUESTIONS[0], RATE)
    sim = PlivoSimulator(offline_server.base_url, plivo_rest.auth_token)
    async with sim.call(to="", agent="demo") as call:
        await until(lambda: bool(pools(state.calls.shared, "piper")), 30)
        pool = pools(state.calls.shared, "piper")[0]
        # The greeting is being rendered (a sentence takes ~100 ms or more): its worker dies.
        def rendering() -> list[Any]:
            return [w for w in pool.busy_workers() if w.running]

        await until(lambda: bool(rendering()), 30)
        victim = rendering()[0]
        assert victim.pid is not None and victim.pid != os.getpid()
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        await until(lambda: pool.last_death is not None, 10)
        assert "SIGKILL" in str(pool.last_death)
        # The greeting still plays, then the caller's question gets a real answer.
        assert await call.wait_agent_quiet(quiet_s=0.6, within_s=30, speak_within_s=15)
        asked_at = time.monotonic()
        call.say(audio, RATE)
        await call.wait_said(within_s=30)
        assert await call.wait_agent_quiet(quiet_s=1.0, within_s=45, speak_within_s=15,
                                           since=asked_at)
        drain()
        answers = [e.event.text for t, e in seen if e.type == "agent.speech_started"
                   and t >= asked_at]
        assert answers and not any(apology.startswith(a) for a in answers), answers
    errors = [e.event for t, e in seen if e.type == "session.error" and t >= killed_at]
    assert not errors, errors
    async with httpx.AsyncClient(base_url=offline_server.base_url) as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["native_workers"] == "ok"
    sub.close()


async def test_readyz_says_when_a_worker_cannot_start(
        live_server: LiveServer, tmp_path: Path, local_models_dir: Path) -> None:
    """An agent's llama.cpp model that no worker can load: /readyz is 503 and says why, in
    words, until a worker starts."""
    from providers.base import ProviderContext, ProviderError
    from providers.llm.llama_cpp import LlamaCppConfig, LlamaCppLLM

    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    host = live_server.state.calls

    async def no_secret(ref: Any) -> str:
        raise AssertionError("no credentials needed")

    llm = LlamaCppLLM(LlamaCppConfig.model_validate({"model": str(bad)}), ProviderContext(
        resolve_secret=no_secret, models_dir=str(tmp_path), shared=host.shared))
    with pytest.raises(ProviderError):
        await llm.warm()
    async with httpx.AsyncClient(base_url=live_server.base_url) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503, ready.text
        why = ready.json()["checks"]["native_workers"]
        assert why.startswith("error: a llama.cpp worker cannot start: could not load "
                              "truncated.gguf"), why
        # Once a worker starts (the file is now a real model), the pool is ready again.
        bad.unlink()
        bad.symlink_to(local_models_dir / model_store.QWEN25_05B.name)
        await llm.warm()
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["native_workers"] == "ok"
