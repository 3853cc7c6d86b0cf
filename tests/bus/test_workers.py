"""`phonebooth serve --workers 2`: two real processes on one port, one service through Redis.

Real calls from the Plivo simulator (vendors are protocol-level fakes in this process) reach
whichever worker the kernel hands the connection to; `say` sent through the shared port
reaches each call wherever it lives (the worker that gets the request forwards it to the owner
when it does not host the call). SIGTERM on the supervisor drains both workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

from app.config import DatabaseSettings
from app.db.engine import open_database
from app.db.models import Session
from app.db.repos import agents as agents_repo
from app.db.repos import numbers as numbers_repo
from app.simulator.far_end import PlivoSimulator
from tests.bus.conftest import REDIS_URL
from tests.conftest import TEST_ADMIN_KEY, TEST_SECRET_KEY
from tests.e2e.tools_fixtures import (
    AGENT_NUMBER,
    CALLER,
    KEY_ENV,
    TEST_IDLE,
    TEST_TURN,
    vendor_blocks,
)
from tests.fakes.fake_deepgram import FakeDeepgram
from tests.fakes.fake_elevenlabs import FakeElevenLabs
from tests.fakes.fake_openai import FakeOpenAI
from tests.fakes.plivo_rest import run_fake_plivo_rest
from tests.fakes.vendor_base import FAKE_API_KEY
from tests.pg_cluster import free_port

REPO = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
CALLS = 4


def _spawn(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--workers", "2", "--host", "127.0.0.1",
             "--port", str(port)], env=env, cwd=REPO, stdout=out, stderr=out)


def worker_pid(supervisor: int, node_id: str) -> int:
    """The pid of the supervisor's worker running as `node_id`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == supervisor and f"PHONEBOOTH__SERVER__NODE_ID={node_id}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no worker {node_id} under {supervisor}")


async def session_row(database_url: str, session_id: str) -> Any:
    db = open_database(DatabaseSettings(url=database_url))
    try:
        async with db.session() as s:
            return await s.get(Session, session_id)
    finally:
        await db.dispose()


async def session_node(database_url: str, session_id: str) -> str:
    deadline = time.monotonic() + 10
    while True:
        row = await session_row(database_url, session_id)
        if row is not None and row.status == "active" and row.node_id:
            return str(row.node_id)
        assert time.monotonic() < deadline, "the call was never active"
        await asyncio.sleep(0.1)


def _tail(log: Path) -> str:
    return log.read_text()[-3000:]


@contextlib.contextmanager
def workers(env: dict[str, str], port: int, log: Path) -> Iterator[Any]:
    proc = _spawn(env, port, log)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()  # its workers follow (they get SIGTERM when it dies)
                proc.wait()


async def _until(cond: Any, within_s: float, what: str, proc: Any, log: Path) -> None:
    deadline = time.monotonic() + within_s
    while not await cond():
        if proc.poll() is not None:
            raise AssertionError(f"supervisor exited: {_tail(log)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {_tail(log)}")
        await asyncio.sleep(0.2)


async def test_serve_with_two_workers_carries_calls_and_routes_control(
        database_url: str, tmp_path: Path, models_dir: Path) -> None:
    prefix = f"pbtest-{uuid.uuid4().hex[:12]}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "workers.log"
    r = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    async with run_fake_plivo_rest() as rest, FakeOpenAI(default_reply="Sure.") as openai, \
            FakeDeepgram(default_transcript="") as deepgram, \
            FakeElevenLabs(ms_per_char=5.0) as eleven:
        db = open_database(DatabaseSettings(url=database_url))
        try:
            async with db.transaction() as s:
                agent, _ = await agents_repo.create(s, {
                    "name": "workers test", "prompt": "Be brief.", "greeting": "Hello there.",
                    "turn": dict(TEST_TURN), "idle": dict(TEST_IDLE),
                    **vendor_blocks(openai, deepgram, eleven)})
                await numbers_repo.put(s, AGENT_NUMBER, agent.id)
        finally:
            await db.dispose()
        env = {
            **os.environ, "PYTHONPATH": str(REPO), KEY_ENV: FAKE_API_KEY,
            "PHONEBOOTH__DATABASE__URL": database_url,
            "PHONEBOOTH__SECURITY__SECRET_KEY": TEST_SECRET_KEY,
            "PHONEBOOTH__SECURITY__ADMIN_API_KEY": TEST_ADMIN_KEY,
            "PHONEBOOTH__SECURITY__SECRET_KEY_FILE": str(tmp_path / "data" / "secret.key"),
            "PHONEBOOTH__OUTBOX__PATH": str(tmp_path / "data" / "outbox.db"),
            "PHONEBOOTH__MODELS__DIR": str(models_dir),
            "PHONEBOOTH__MODELS__FETCH_ON_START": "false",
            "PHONEBOOTH__DEMO__CREATE_ON_START": "false",
            "PHONEBOOTH__SERVER__PUBLIC_URL": base,
            "PHONEBOOTH__SERVER__NODE_ID": "smoke",
            "PHONEBOOTH__PLIVO__AUTH_ID": rest.auth_id,
            "PHONEBOOTH__PLIVO__AUTH_TOKEN": rest.auth_token,
            "PHONEBOOTH__PLIVO__API_BASE_URL": rest.api_base,
            "PHONEBOOTH__BUS__URL": REDIS_URL,
            "PHONEBOOTH__BUS__KEY_PREFIX": prefix,
            "PHONEBOOTH__BUS__HEARTBEAT_S": "0.5",
            "PHONEBOOTH__BUS__OWNER_TTL_S": "2",
        }
        env.pop("PHONEBOOTH_CONFIG", None)
        try:
            with workers(env, port, log) as proc:
                async def both_up() -> bool:
                    return len([k async for k in r.scan_iter(f"{prefix}:node:*")]) == 2

                await _until(both_up, 240, "both workers on the bus", proc, log)
                sim = PlivoSimulator(base, rest.auth_token)
                heard: list[bool] = []
                sessions: list[str] = []
                async with httpx.AsyncClient(base_url=base, trust_env=False) as client, \
                        contextlib.AsyncExitStack() as stack:
                    calls = []
                    for _ in range(CALLS):
                        call = sim.call(to=AGENT_NUMBER, from_=CALLER)
                        rest.live_calls.add(call.call_uuid)
                        calls.append(await stack.enter_async_context(call))
                    for call in calls:
                        assert await call.wait_agent_quiet(within_s=30, speak_within_s=20)
                        before = len(call.result.agent_audio_starts)
                        resp = await client.post(f"/v1/sessions/{call.session_id}/say",
                                                 json={"text": "One more thing."}, headers=AUTH)
                        assert resp.status_code == 202, resp.text

                        async def spoke(c: Any = call, n: int = before) -> bool:
                            return len(c.result.agent_audio_starts) > n

                        await _until(spoke, 20, "the say heard by the caller", proc, log)
                        heard.append(True)
                        sessions.append(str(call.session_id))
                    assert heard == [True] * CALLS
                    # SIGKILL the worker hosting the first call: a survivor (or the worker,
                    # restarted by the supervisor under the same name) closes it.
                    hosts = {sid: await session_node(database_url, sid) for sid in sessions}
                    print("calls hosted by", sorted(hosts.values()))
                    victim = hosts[sessions[0]]
                    lost = [sid for sid, h in hosts.items() if h == victim]
                    os.kill(worker_pid(proc.pid, victim), signal.SIGKILL)

                    async def closed() -> bool:
                        rows = [await session_row(database_url, sid) for sid in lost]
                        return all(row.status not in ("ringing", "active") for row in rows)

                    await _until(closed, 20, "the killed worker's calls closed", proc, log)
                    for sid in lost:
                        row = await session_row(database_url, sid)
                        assert row.status == "interrupted"
                        assert row.end_reason in ("node_lost", "server_restart")
                        sessions.remove(sid)
                    await _until(both_up, 120, "the killed worker back", proc, log)
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(proc.wait, 90) == 0
        finally:
            keys = [k async for k in r.scan_iter(f"{prefix}:*")]
            if keys:
                await r.delete(*keys)
            await r.aclose()
    db = open_database(DatabaseSettings(url=database_url))
    try:
        async with db.session() as s:
            rows = [await s.get(Session, sid) for sid in sessions]
    finally:
        await db.dispose()
    assert all(row is not None and row.status == "ended" for row in rows)
    assert {row.node_id for row in rows if row is not None} <= {"smoke-w0", "smoke-w1"}


def test_workers_without_a_bus_is_one_clear_line(capsys: Any) -> None:
    from app.cli import main

    assert main(["serve", "--workers", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("config error: bus.url: required to run 2 workers")
    assert main(["serve", "--workers", "0"]) == 1
    assert "--workers must be at least 1" in capsys.readouterr().err
