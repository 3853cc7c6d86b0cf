"""The server killed with SIGKILL while its outbox holds a call's records (issue 21).

`phonebooth serve` runs as its own process on a private PostgreSQL cluster. A call is made to
it (Plivo simulator, Piper speech; vendors are protocol-level fakes in this process); the
database is stopped after the greeting, the caller asks a question and hangs up, so the turn,
its usage and the session's end can only be in the outbox file. The server is then killed with
SIGKILL, the database started again, and the server restarted: at start it replays the file,
and everything the first run published (read from its event WebSocket) is in the database
exactly once — the session closed with its real end, not as `interrupted`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.config import DatabaseSettings
from app.db.engine import open_database
from app.db.models import Session, Turn, UsageRecord
from app.db.repos import agents as agents_repo
from app.db.repos import numbers as numbers_repo
from app.simulator.far_end import PlivoSimulator
from tests.conftest import TEST_ADMIN_KEY, TEST_SECRET_KEY, _migrate, _run_in_thread
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
from tests.pg_cluster import PG_MISSING, PrivateCluster, free_port
from tests.speech import synthesize, with_silence

pytestmark = [pytest.mark.slow, pytest.mark.postgres,
              pytest.mark.skipif(bool(PG_MISSING), reason=PG_MISSING or "")]

REPO = Path(__file__).resolve().parents[2]
QUESTION = "Where is my order A123?"
ANSWER = "It ships on Tuesday."


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    c = PrivateCluster()
    try:
        c.start()
        yield c
    finally:
        c.destroy()


class ServerProcess:
    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1",
                 "--port", str(self.port)], env=self.env, cwd=REPO, stdout=out, stderr=out)

    async def start(self) -> None:
        self.proc = self._spawn()
        deadline = time.monotonic() + 180
        async with httpx.AsyncClient(base_url=self.base_url) as c:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"server exited: {self.log.read_text()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await c.get("/readyz", timeout=2)).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise AssertionError("server not ready in time")
                await asyncio.sleep(0.2)

    async def metrics(self) -> dict[str, float]:
        async with httpx.AsyncClient(base_url=self.base_url) as c:
            text = (await c.get("/metrics")).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(("phonebooth_outbox_", "phonebooth_active_calls")):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.asynccontextmanager
async def published_events(base_url: str) -> AsyncIterator[list[dict[str, Any]]]:
    """Every event the server publishes, from its `/v1/events` WebSocket."""
    frames: list[dict[str, Any]] = []
    ws_url = base_url.replace("http://", "ws://") + "/v1/events"
    ws = await connect(ws_url, additional_headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"})

    async def read() -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                frames.append(json.loads(await ws.recv()))

    task = asyncio.create_task(read())
    try:
        yield frames
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        with contextlib.suppress(Exception):
            await ws.close()


async def _until(cond: Any, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_sigkill_with_records_in_the_outbox_then_restart(
    cluster: PrivateCluster, tmp_path: Path, models_dir: Path,
    e2e_report: Any,
) -> None:
    url = cluster.create_database(f"pb_{uuid.uuid4().hex[:12]}")
    _run_in_thread(lambda: _migrate(url))
    port = free_port()
    async with run_fake_plivo_rest() as rest, FakeOpenAI(default_reply=ANSWER) as openai, \
            FakeDeepgram(default_transcript="") as deepgram, \
            FakeElevenLabs(ms_per_char=30.0) as eleven:
        db = open_database(DatabaseSettings(url=url))
        try:
            async with db.transaction() as s:
                agent, _ = await agents_repo.create(s, {
                    "name": "crash test", "prompt": "Be brief.",
                    "greeting": "Hi, this is the test line.", "turn": dict(TEST_TURN),
                    "idle": dict(TEST_IDLE), **vendor_blocks(openai, deepgram, eleven)})
                await numbers_repo.put(s, AGENT_NUMBER, agent.id)
        finally:
            await db.dispose()
        env = {
            **os.environ, "PYTHONPATH": str(REPO), KEY_ENV: FAKE_API_KEY,
            "PHONEBOOTH__DATABASE__URL": url,
            "PHONEBOOTH__SECURITY__SECRET_KEY": TEST_SECRET_KEY,
            "PHONEBOOTH__SECURITY__ADMIN_API_KEY": TEST_ADMIN_KEY,
            "PHONEBOOTH__SECURITY__SECRET_KEY_FILE": str(tmp_path / "data" / "secret.key"),
            "PHONEBOOTH__MODELS__DIR": str(models_dir),
            "PHONEBOOTH__MODELS__FETCH_ON_START": "false",
            "PHONEBOOTH__DEMO__CREATE_ON_START": "false",
            "PHONEBOOTH__SERVER__PUBLIC_URL": f"http://127.0.0.1:{port}",
            "PHONEBOOTH__PLIVO__AUTH_ID": rest.auth_id,
            "PHONEBOOTH__PLIVO__AUTH_TOKEN": rest.auth_token,
            "PHONEBOOTH__PLIVO__API_BASE_URL": rest.api_base,
            "PHONEBOOTH__OUTBOX__RETRY_MAX_S": "0.5",
        }
        env.pop("PHONEBOOTH_CONFIG", None)
        server = ServerProcess(env, port, tmp_path / "server.log")
        deepgram.queue_transcript(QUESTION)
        try:
            await server.start()
            async with published_events(server.base_url) as frames:
                sim = PlivoSimulator(server.base_url, rest.auth_token)
                call = sim.call(to=AGENT_NUMBER, from_=CALLER)
                rest.live_calls.add(call.call_uuid)
                async with call:
                    assert await call.wait_agent_quiet(within_s=30, speak_within_s=15)
                    await asyncio.to_thread(cluster.stop)
                    audio = with_silence(synthesize(QUESTION), lead_ms=200, trail_ms=200)
                    seconds = call.say(audio, 16000)
                    await call.wait_said(within_s=seconds + 30)

                    async def answered() -> bool:
                        return any(f.get("type") == "turn.completed" for f in frames)
                    await _until(answered, 40, "the answer")
                    await call.wait_agent_quiet(within_s=30, speak_within_s=5)

                async def ended() -> bool:
                    m = await server.metrics()
                    return any(f.get("type") == "session.ended" for f in frames) and \
                        m.get("phonebooth_active_calls") == 0
                await _until(ended, 30, "the call to end")
                await asyncio.sleep(1.0)  # the stream's end record reaches the outbox file
                before_kill = await server.metrics()
            server.kill()
            published = [f for f in frames if f.get("session_id") and "seq" in f]
            await asyncio.to_thread(cluster.start)
            await server.start()  # replays the outbox before it says ready
            after_restart = await server.metrics()
        finally:
            server.terminate()
            if not cluster.running():
                cluster.start()

    assert before_kill["phonebooth_outbox_database_up"] == 0
    assert before_kill["phonebooth_outbox_depth"] > 0
    sid = published[0]["session_id"]
    expected_turns: list[tuple[str, str]] = []
    for f in published:
        if f["type"] == "turn.completed":
            if f["data"].get("user_text"):
                expected_turns.append(("user", f["data"]["user_text"]))
            if f["data"].get("agent_text"):
                expected_turns.append(("assistant", f["data"]["agent_text"]))
    usage_ids = sorted(f["id"] for f in published if f["type"] == "session.usage")
    db = open_database(DatabaseSettings(url=url))
    try:
        async with db.session() as s:
            row = await s.get(Session, sid)
            turns = [(t.role, t.text) for t in (await s.execute(
                select(Turn).where(Turn.session_id == sid).order_by(Turn.idx))).scalars()]
            usage = sorted(str(u.event_id) for u in (await s.execute(
                select(UsageRecord).where(UsageRecord.session_id == sid))).scalars())
    finally:
        await db.dispose()
    assert row is not None
    assert row.status == "ended" and row.end_reason not in (None, "server_restart")
    assert ("user", QUESTION) in turns and ("assistant", ANSWER) in turns
    assert turns == expected_turns
    assert usage_ids and usage == usage_ids
    assert after_restart["phonebooth_outbox_depth"] == 0
    e2e_report("SIGKILL with a full outbox", [
        f"killed with {before_kill['phonebooth_outbox_depth']:.0f} record(s) in the outbox; "
        f"after restart: {len(turns)} turns, {len(usage)} usage rows, session "
        f"{row.status}/{row.end_reason} — each once",
    ])
