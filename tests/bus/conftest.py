"""Two real servers sharing one database and one Redis: a cluster in one test.

`cluster_factory(**bus_overrides)` starts servers "a" and "b" (uvicorn on 127.0.0.1 ports)
on the test's database (SQLite file or Postgres) and the local Redis at 127.0.0.1:6379 under a
key prefix of their own (removed afterwards). Calls run the `ClusterRunner` instead of the
conversation engine. Both servers are one service behind one public URL in production; here
each has its own address, so Plivo signatures (checked over the public URL) are off and the
stream token alone authenticates the stream.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from app.config import Settings
from app.db.repos import agents as agents_repo
from app.db.repos import numbers as numbers_repo
from app.simulator.far_end import PlivoSimulator, SimCall
from tests.bus.runner import ClusterRunner
from tests.fakes.plivo_rest import FakePlivoRest, run_fake_plivo_rest
from tests.live_server import LiveServer, run_live_server
from tests.pg_cluster import free_port

REDIS_URL = "redis://127.0.0.1:6379/0"
AGENT_NUMBER = "+14155550199"
REDIS_SERVER = shutil.which("redis-server")


@dataclass
class Node:
    name: str
    server: LiveServer
    sim: PlivoSimulator
    runner: ClusterRunner

    @property
    def state(self) -> Any:
        return self.server.state


@dataclass
class Cluster:
    a: Node
    b: Node
    rest: FakePlivoRest
    prefix: str
    redis: aioredis.Redis
    wired: dict[str, SimCall] = field(default_factory=dict)

    def wire(self, call: SimCall) -> SimCall:
        """Make the fake Plivo REST API end this call the way Plivo would on a REST hangup."""
        self.rest.live_calls.add(call.call_uuid)
        self.wired[call.call_uuid] = call

        async def on_hangup(call_uuid: str) -> None:
            if call_uuid in self.wired:
                await self.wired[call_uuid].remote_hangup()

        self.rest.on_hangup = on_hangup
        return call


@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """No conversation engine (models) on these servers: calls use the ClusterRunner."""
    import app.main

    kept = [c for c in app.main.COMPONENTS if c.__module__ != "app.calls.component"]
    monkeypatch.setattr(app.main, "COMPONENTS", kept)


@pytest.fixture
async def cluster_factory(settings_factory: Callable[..., Settings], no_engine: None,
                          tmp_path: Path) -> AsyncIterator[Any]:
    prefix = f"pbtest-{uuid.uuid4().hex[:12]}"
    r = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)

    @contextlib.asynccontextmanager
    async def make(redis_url: str = REDIS_URL, **bus: Any) -> AsyncIterator[Cluster]:
        async with run_fake_plivo_rest() as rest, contextlib.AsyncExitStack() as stack:
            nodes = []
            for name in ("a", "b"):
                settings = settings_factory(
                    server={"node_id": name},
                    security={"verify_plivo_signatures": False},
                    plivo={"auth_id": rest.auth_id, "auth_token": rest.auth_token,
                           "api_base_url": rest.api_base},
                    bus={"url": redis_url, "key_prefix": prefix, "heartbeat_s": 0.2,
                         "owner_ttl_s": 1.0, **bus},
                    # One database, but each process replays its own outbox file.
                    outbox={"path": str(tmp_path / f"outbox-{name}.db")},
                )
                server = await stack.enter_async_context(run_live_server(settings))
                runner = ClusterRunner(server.state)
                server.state.calls = runner
                nodes.append(Node(name, server, PlivoSimulator(server.base_url,
                                                               rest.auth_token), runner))
            async with nodes[0].state.db.transaction() as s:
                agent, _ = await agents_repo.create(s, {"name": "Cluster test",
                                                        "prompt": "You are a test agent."})
                await numbers_repo.put(s, AGENT_NUMBER, agent.id)
            for n in nodes:  # the number was added through a's database session
                n.state.extras["app.telephony.plivo"].routes.invalidate()
            yield Cluster(nodes[0], nodes[1], rest, prefix, r)
            for n in nodes:
                n.state.extras["app.telephony.plivo"].admission.drop_reservations()

    try:
        yield make
    finally:
        keys = [k async for k in r.scan_iter(f"{prefix}:*")]
        if keys:
            await r.delete(*keys)
        await r.aclose()


class PrivateRedis:
    """A redis-server of this test's own on a free port, to stop and start at will."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5):
                return
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    r = PrivateRedis(tmp_path)
    r.start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
async def cluster(cluster_factory: Any) -> AsyncIterator[Cluster]:
    async with cluster_factory() as c:
        yield c
