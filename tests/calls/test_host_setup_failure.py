"""A call whose providers fail to build still ends cleanly.

The host builds STT, LLM and TTS in turn; when one of them raises, the call is hung up with
reason `setup_failed`. Its cleanup must still publish `session.ended` and close the providers
that were built — also for an agent with a post-call summary prompt, whose summary would need the
LLM that never came to be.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import numpy as np
from fastapi import FastAPI
from sqlalchemy import update

from app.calls.call import SETUP_FAILED_REASON
from app.calls.runner import CallInfo
from app.calls.transport import DtmfEvent
from app.db.models import AgentVersion
from app.db.repos import agents as agents_repo
from app.events.bus import Envelope
from providers import registry
from providers.base import LLMEvent, LLMProvider, Message, ProviderContext, ToolSpec
from tests.api.providers import ApiTestSTT, agent_config, register_test_providers
from tests.events.conftest import make_session


class ClosingSTT(ApiTestSTT):
    """Builds fine; remembers being closed."""

    name = "setupfail_stt"
    closed: ClassVar[list[str]] = []

    async def aclose(self) -> None:
        type(self).closed.append(self.name)


class UnbuildableLLM(LLMProvider):
    """Fails in its constructor, as an adapter does whose model or client cannot be set up."""

    name = "setupfail_llm"
    Config = ApiTestSTT.Config

    def __init__(self, config: Any, ctx: ProviderContext) -> None:
        raise RuntimeError("model file is missing")

    async def stream(
        self, messages: list[Message], tools: list[ToolSpec] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> AsyncIterator[LLMEvent]:
        raise AssertionError("never built")
        yield  # an async generator, like every LLM


class _Playout:
    async def send_dtmf(self, digits: str) -> None:
        pass


class SilentTransport:
    """A caller that never speaks; records the host's hangup."""

    codec = "audio/x-mulaw;rate=8000"

    def __init__(self, call_uuid: str) -> None:
        self.call_uuid = call_uuid
        self.stream_id = "stream-1"
        self.playout = _Playout()
        self.hangups: list[str] = []
        self._ended = asyncio.Event()

    async def frames(self) -> AsyncIterator[np.ndarray]:
        await self._ended.wait()
        return
        yield

    async def dtmf(self) -> AsyncIterator[DtmfEvent]:
        await self._ended.wait()
        return
        yield

    @property
    def closed(self) -> bool:
        return self._ended.is_set()

    @property
    def end_reason(self) -> str | None:
        return self.hangups[0] if self.hangups else None

    async def hangup(self, reason: str) -> None:
        self.hangups.append(reason)
        self._ended.set()

    async def transfer(self, plan: object) -> None:
        raise AssertionError("no transfer expected")


async def test_providers_failing_to_build_with_a_summary_prompt_still_end_the_session(
    app: FastAPI,
) -> None:
    register_test_providers()
    registry.register(ClosingSTT)
    registry.register(UnbuildableLLM)
    ClosingSTT.closed.clear()
    state = app.state.pb
    session_id, agent_id = await make_session(state.db, status="active")
    config = agent_config(
        stt={"provider": "setupfail_stt"},
        llm={"provider": "setupfail_llm"},
        post_call={"summary_prompt": "Summarise the call in one line."},
    )
    info = CallInfo(
        session_id=session_id, agent_id=agent_id, agent_version=1, agent_config=config,
        direction="inbound", from_number="+14155550100", to_number="+14155550199",
        call_uuid="call-uuid-1", stream_id="stream-1",
    )
    transport = SilentTransport(info.call_uuid)
    events = state.events.bus.subscribe(session_id)

    reason = await asyncio.wait_for(state.calls.run(info, transport), 10)

    assert reason == SETUP_FAILED_REASON
    assert transport.hangups == [SETUP_FAILED_REASON]
    assert ClosingSTT.closed == ["setupfail_stt"]  # built before the LLM failed: closed
    seen: list[Envelope] = []
    while (env := events.get_nowait()) is not None:
        seen.append(env)
    types = [e.type for e in seen]
    assert types[0] == "session.started" and types[-1] == "session.ended", types
    error = next(e.event for e in seen if e.type == "session.error")
    assert "model file is missing" in error.message
    ended = seen[-1].event
    assert ended.reason == SETUP_FAILED_REASON
    assert "summary" not in ended.report  # no LLM to write one
    assert state.calls.active == 0


async def test_the_host_loads_the_agent_version_the_session_is_pinned_to(app: FastAPI) -> None:
    """A stream that arrives without the answer URL's in-process handoff (another replica
    answered, or an outbound call) carries only agent id and version: the host reads that
    version itself, not the agent's newest one."""
    register_test_providers()
    registry.register(ClosingSTT)
    registry.register(UnbuildableLLM)
    state = app.state.pb
    session_id, agent_id = await make_session(state.db, status="active")
    pinned = agent_config(stt={"provider": "setupfail_stt"}, llm={"provider": "setupfail_llm"})
    async with state.db.transaction() as s:
        await s.execute(update(AgentVersion)
                        .where(AgentVersion.agent_id == agent_id, AgentVersion.version == 1)
                        .values(config=pinned))
        agent = await agents_repo.get(s, agent_id)
        assert agent is not None
        await agents_repo.add_version(s, agent, agent_config())  # newer, and it would work
    info = CallInfo(
        session_id=session_id, agent_id=agent_id, agent_version=1, agent_config=None,
        direction="inbound", from_number="+14155550100", to_number="+14155550199",
        call_uuid="call-uuid-1", stream_id="stream-1",
    )
    transport = SilentTransport(info.call_uuid)
    events = state.events.bus.subscribe(session_id)

    reason = await asyncio.wait_for(state.calls.run(info, transport), 10)

    assert reason == SETUP_FAILED_REASON  # version 1's LLM, not version 2's
    seen: list[Envelope] = []
    while (env := events.get_nowait()) is not None:
        seen.append(env)
    error = next(e.event for e in seen if e.type == "session.error")
    assert "model file is missing" in error.message
