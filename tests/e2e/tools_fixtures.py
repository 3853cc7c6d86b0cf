"""A whole call stack for end-to-end tests of tools, events and session records.

Real parts: the Phonebooth server (uvicorn on 127.0.0.1, call host, Silero VAD and smart-turn
models, SQL store, event bus, webhook deliverer), the Plivo simulator playing the caller, and
synthesised caller speech (Piper). Outside this machine, so faked at the protocol level: Plivo's
REST API (`tests.fakes.plivo_rest`), the LLM (fake OpenAI, replies and tool calls scripted with
`queue_chat`), the STT (fake Deepgram, transcripts scripted with `queue_transcript`) and the TTS
(fake ElevenLabs, a tone whose length follows the text).

    async with call_stack(settings_factory, monkeypatch) as stack:
        agent_id = await stack.add_agent(tools=[...])
        stack.openai.queue_chat(ChatReply(tool_calls=[FakeToolCall("get_order", {...})]), "...")
        async with stack.call() as call:
            await stack.say(call, "Where is my order?")
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from app.config import Settings
from app.db.repos import agents as agents_repo
from app.db.repos import numbers as numbers_repo
from app.events.bus import Envelope, SubscriptionClosed
from app.simulator.far_end import PlivoSimulator, SimCall
from tests.conftest import TEST_ADMIN_KEY
from tests.fakes.fake_deepgram import FakeDeepgram
from tests.fakes.fake_elevenlabs import FakeElevenLabs
from tests.fakes.fake_openai import ChatReply, FakeOpenAI, FakeToolCall
from tests.fakes.plivo_rest import FakePlivoRest, run_fake_plivo_rest
from tests.fakes.vendor_base import FAKE_API_KEY
from tests.live_server import LiveServer, run_live_server
from tests.speech import synthesize, with_silence

AGENT_NUMBER = "+14155550199"
CALLER = "+14155550100"
KEY_ENV = "PB_E2E_VENDOR_KEY"
ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}

# Turn-taking tuned for tests: the defaults, but a shorter end-of-turn cap so a turn whose
# smart-turn probability is low still ends within a second, and long idle timers so an idle
# re-prompt never lands in the middle of a scripted exchange.
TEST_TURN = {"max_wait_ms": 1200}
TEST_IDLE = {"timeout_s": 30, "max_prompts": 1}


def vendor_blocks(openai: FakeOpenAI, deepgram: FakeDeepgram,
                  eleven: FakeElevenLabs) -> dict[str, Any]:
    key = {"env": KEY_ENV}
    return {
        "stt": {"provider": "deepgram", "api_key": key, "base_url": deepgram.ws_base_url},
        "llm": {"provider": "openai", "api_key": key, "base_url": openai.base_url,
                "model": "gpt-4o-mini"},
        "tts": {"provider": "elevenlabs", "api_key": key, "base_url": eleven.ws_base_url,
                "output": "pcm_16000"},
    }


@dataclass
class CallStack:
    server: LiveServer
    rest: FakePlivoRest
    sim: PlivoSimulator
    openai: FakeOpenAI
    deepgram: FakeDeepgram
    eleven: FakeElevenLabs
    sims: dict[str, SimCall] = field(default_factory=dict)
    transfer_docs: dict[str, str] = field(default_factory=dict)

    @property
    def state(self) -> Any:
        return self.server.state

    @property
    def signing_secret(self) -> str:
        """What tool and event webhooks are signed with (receivers verify with it)."""
        from app.events.signing import signing_secret_from_box

        return signing_secret_from_box(self.state.crypto)

    def agent_config(self, **overrides: Any) -> dict[str, Any]:
        config: dict[str, Any] = {
            "name": "E2E agent",
            "prompt": "You are a helpful phone agent. Be brief.",
            "greeting": "Hi, this is the test line.",
            "turn": dict(TEST_TURN),
            "idle": dict(TEST_IDLE),
            **vendor_blocks(self.openai, self.deepgram, self.eleven),
        }
        config.update(overrides)
        return config

    async def add_agent(self, number: str | None = AGENT_NUMBER, **overrides: Any) -> str:
        async with self.state.db.transaction() as s:
            agent, _ = await agents_repo.create(s, self.agent_config(**overrides))
            if number:
                await numbers_repo.put(s, number, agent.id)
            return str(agent.id)

    def call(self, to: str = AGENT_NUMBER, **kw: Any) -> SimCall:
        """A simulated inbound call, registered as live with the fake REST API (so the agent's
        REST hangup/transfer reach it)."""
        call = self.sim.call(to=to, from_=CALLER, **kw)
        self.watch(call)
        return call

    def watch(self, call: SimCall) -> None:
        self.rest.live_calls.add(call.call_uuid)
        self.sims[call.call_uuid] = call

    async def dial_out(self, agent_id: str, to: str = "+14155550123",
                       **body: Any) -> tuple[str, SimCall]:
        """`POST /v1/calls`; the simulated callee answers at once. Returns (session, call)."""
        answered: asyncio.Future[SimCall] = asyncio.get_running_loop().create_future()

        async def on_make_call(req: dict[str, Any], request_uuid: str) -> None:
            call = self.sim.call(to=req["to"], from_=req["from"], call_uuid=request_uuid,
                                 direction="outbound",
                                 answer_query=urlsplit(req["answer_url"]).query)
            self.watch(call)
            try:
                await call.start()
            except Exception as exc:
                answered.set_exception(exc)
                return
            answered.set_result(call)

        self.rest.on_make_call = on_make_call
        r = await self.post("/v1/calls", {"agent_id": agent_id, "to": to, "from": CALLER,
                                          **body})
        assert r.status_code == 201, r.text
        return r.json()["session_id"], await asyncio.wait_for(answered, 15)

    async def say(self, call: SimCall, text: str, *, lead_ms: int = 200,
                  trail_ms: int = 0, wait: bool = True) -> float:
        """The caller says `text` (Piper speech at the call's pace); returns its duration."""
        audio = with_silence(synthesize(text), lead_ms=lead_ms, trail_ms=trail_ms)
        seconds = call.say(audio, 16000)
        if wait:
            await call.wait_said(within_s=seconds + 30)
        return seconds

    async def get(self, path: str, **params: Any) -> Any:
        async with httpx.AsyncClient(base_url=self.server.base_url, headers=ADMIN) as c:
            r = await c.get(path, params=params)
        assert r.status_code == 200, r.text
        return r.json()

    async def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.server.base_url, headers=ADMIN) as c:
            return await c.post(path, json=body)

    async def session_id(self, call: SimCall, within_s: float = 10.0) -> str:
        """The session of a simulated call (once the server has created it)."""
        from app.db.repos import sessions as sessions_repo

        deadline = time.monotonic() + within_s
        while True:
            async with self.state.db.session() as s:
                row = await sessions_repo.get_by_call_uuid(s, call.call_uuid)
            if row is not None:
                return str(row.id)
            if time.monotonic() > deadline:
                raise AssertionError(f"no session for call {call.call_uuid}")
            await asyncio.sleep(0.05)

    async def settled(self) -> None:
        """Everything published so far is in the database."""
        await self.state.events.flush()

    # -- Plivo side of the REST API -----------------------------------------------------------
    async def _on_hangup(self, call_uuid: str) -> None:
        call = self.sims.get(call_uuid)
        if call is not None:
            await call.remote_hangup()

    async def _on_transfer(self, call_uuid: str, body: dict[str, Any]) -> None:
        # Plivo fetches the new XML for the caller's leg, signed like any other callback.
        resp = await self.sim.request("POST", body["aleg_url"],
                                      {"CallUUID": call_uuid, "Event": "Transfer"})
        self.transfer_docs[call_uuid] = resp.text


@contextlib.asynccontextmanager
async def call_stack(settings_factory: Callable[..., Settings],
                     monkeypatch: pytest.MonkeyPatch, **settings: Any
                     ) -> AsyncIterator[CallStack]:
    """The server with its call host, wired to a fake Plivo REST API and fake vendors."""
    monkeypatch.setenv(KEY_ENV, FAKE_API_KEY)
    async with run_fake_plivo_rest() as rest, \
            FakeOpenAI(default_reply="Sure.") as openai, \
            FakeDeepgram(default_transcript="") as deepgram, \
            FakeElevenLabs(ms_per_char=30.0) as eleven:
        overrides: dict[str, Any] = {
            "plivo": {"auth_id": rest.auth_id, "auth_token": rest.auth_token,
                      "api_base_url": rest.api_base},
            "events": {"webhook_backoff_s": 0.05},
        }
        for k, v in settings.items():
            overrides[k] = {**overrides.get(k, {}), **v}
        async with run_live_server(settings_factory(**overrides)) as server:
            sim = PlivoSimulator(server.base_url, rest.auth_token)
            stack = CallStack(server, rest, sim, openai, deepgram, eleven)
            rest.on_hangup = stack._on_hangup
            rest.on_transfer = stack._on_transfer
            try:
                yield stack
            finally:
                for call in stack.sims.values():
                    with contextlib.suppress(Exception):
                        await call.hangup()


# -- scripting a turn -------------------------------------------------------------------------
ORDER_QUESTION = "Where is my order A123?"


def script_order_lookup(stack: CallStack, answer: str) -> None:
    """The caller will ask about order A123; the LLM looks it up with `get_order` (tool call id
    "call_1") and then says `answer`."""
    stack.deepgram.queue_transcript(ORDER_QUESTION)
    stack.openai.queue_chat(
        ChatReply(tool_calls=[FakeToolCall("get_order", {"order": "A123"}, "call_1")]), answer)


# -- looking at events ------------------------------------------------------------------------
def types(envs: list[Envelope] | list[dict[str, Any]]) -> list[str]:
    return [e.type if isinstance(e, Envelope) else e["type"] for e in envs]


def of_type(envs: list[Envelope], *names: str) -> list[Envelope]:
    return [e for e in envs if e.type in names]


class Recorder:
    """Every event of the bus, as published (subscribes to all sessions)."""

    def __init__(self, stack: CallStack) -> None:
        self.sub = stack.state.events.bus.subscribe(None, maxsize=100_000)
        self.events: list[Envelope] = []

    def drain(self) -> list[Envelope]:
        try:
            while (env := self.sub.get_nowait()) is not None:
                self.events.append(env)
        except SubscriptionClosed:
            pass  # the server stopped: everything it published is here
        return self.events

    def session(self, sid: str) -> list[Envelope]:
        return [e for e in self.drain() if e.session_id == sid]

    async def wait_for(self, pred: Callable[[list[Envelope]], bool],
                       within_s: float = 20.0) -> list[Envelope]:
        deadline = time.monotonic() + within_s
        while not pred(self.drain()):
            if time.monotonic() > deadline:
                got = ", ".join(types(self.events[-40:]))
                raise AssertionError(f"events not seen in time; last: {got}")
            await asyncio.sleep(0.02)
        return self.events

    async def wait_type(self, name: str, within_s: float = 20.0, n: int = 1,
                        sid: str | None = None) -> list[Envelope]:
        def seen(envs: list[Envelope]) -> bool:
            return len([e for e in envs if e.type == name
                        and (sid is None or e.session_id == sid)]) >= n
        await self.wait_for(seen, within_s)
        return [e for e in self.events if e.type == name and (sid is None or e.session_id == sid)]

    def close(self) -> None:
        self.sub.close()


def loudness(samples: np.ndarray) -> float:
    if not len(samples):
        return 0.0
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
