"""Fixtures for the Plivo edge: a fake Plivo REST API, the real server pointed at it, an agent
with a number, and the simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from app.config import Settings
from app.db.repos import agents as agents_repo
from app.db.repos import numbers as numbers_repo
from app.db.repos import sessions as sessions_repo
from app.simulator.far_end import PlivoSimulator, SimCall
from tests.fakes.plivo_rest import FakePlivoRest, run_fake_plivo_rest
from tests.live_server import LiveServer, run_live_server
from tests.telephony.echo_runner import GreetingEchoRunner

AGENT_NUMBER = "+14155550199"
CALLER = "+14155550100"
AGENT_CONFIG = {"name": "Edge test", "prompt": "You are a test agent."}


@dataclass
class Edge:
    server: LiveServer
    rest: FakePlivoRest
    sim: PlivoSimulator
    agent_id: str
    wired: dict[str, SimCall] = field(default_factory=dict)

    @property
    def auth_token(self) -> str:
        return self.rest.auth_token

    def wire(self, call: SimCall) -> SimCall:
        """Make the call known to the fake Plivo REST API, whose hangup then ends it the way
        Plivo would (stream closed, hangup callback)."""
        self.rest.live_calls.add(call.call_uuid)
        self.wired[call.call_uuid] = call

        async def on_hangup(call_uuid: str) -> None:
            if call_uuid in self.wired:
                await self.wired[call_uuid].remote_hangup()

        self.rest.on_hangup = on_hangup
        return call


@pytest.fixture
async def plivo_rest() -> AsyncIterator[FakePlivoRest]:
    async with run_fake_plivo_rest() as fake:
        yield fake


async def seed_agent(server: LiveServer, number: str = AGENT_NUMBER) -> str:
    async with server.state.db.transaction() as s:
        agent, _ = await agents_repo.create(s, dict(AGENT_CONFIG))
        await numbers_repo.put(s, number, agent.id)
        return agent.id


@pytest.fixture
def edge_settings(settings_factory: Callable[..., Settings],
                  plivo_rest: FakePlivoRest) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "plivo": {"auth_id": plivo_rest.auth_id, "auth_token": plivo_rest.auth_token,
                      "api_base_url": plivo_rest.api_base},
        }
        for k, v in overrides.items():
            base[k] = {**base.get(k, {}), **v}
        return settings_factory(**base)

    return make


@pytest.fixture
def edge_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the server without the conversation host (app.calls.component): these tests are
    about the telephony edge, so calls use the edge-test echo runner (or a scripted runner a
    test installs) and no engine models or providers are loaded."""
    import app.main

    kept = [c for c in app.main.COMPONENTS if c.__module__ != "app.calls.component"]
    monkeypatch.setattr(app.main, "COMPONENTS", kept)


@pytest.fixture
async def edge_factory(edge_settings: Callable[..., Settings], plivo_rest: FakePlivoRest,
                       edge_only: None):
    """`async with edge_factory(**settings_overrides) as edge:` a server + agent + simulator."""
    import contextlib

    @contextlib.asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[Edge]:
        async with run_live_server(edge_settings(**overrides)) as server:
            # Edge tests check the telephony path, not the conversation: the echo runner
            # sends the caller's audio straight back (tests may install their own runner).
            server.state.calls = GreetingEchoRunner()
            agent_id = await seed_agent(server)
            sim = PlivoSimulator(server.base_url, plivo_rest.auth_token)
            try:
                yield Edge(server, plivo_rest, sim, agent_id)
            finally:
                # Many tests answer calls whose stream never connects; don't make the
                # shutdown drain wait for those to lapse.
                edge = server.state.extras.get("app.telephony.plivo")
                if edge is not None:
                    edge.admission.drop_reservations()

    return make


@pytest.fixture
async def edge(edge_factory) -> AsyncIterator[Edge]:
    async with edge_factory() as e:
        yield e


async def ended_session(edge: Edge, *, session_id: str | None = None,
                        call_uuid: str | None = None, within_s: float = 10.0) -> Any:
    """The session row once the server has recorded the call's end. The server writes it after
    the stream closes, so the simulator sees the close first; reading at once would race it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        async with edge.server.state.db.session() as s:
            row = (await sessions_repo.get(s, session_id) if session_id
                   else await sessions_repo.get_by_call_uuid(s, call_uuid or ""))
        if (row is not None and row.status not in ("ringing", "active")) or loop.time() > deadline:
            return row
        await asyncio.sleep(0.05)
