"""The console's server side without a browser: static files under a strict CSP, the live-call
list, and the playground socket (WS /v1/playground) spoken by a plain WebSocket client.

The playground call runs on the echo runner (tests/telephony/echo_runner.py) so the transport is
checked alone: caller audio in, paced agent audio and checkpoints out, played acks back,
`*` clears the playout (`clearAudio` → `clearedAudio`), `#` hangs up; the session row is
recorded like a phone call's.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.db.repos import agents as agents_repo
from app.db.repos import sessions as sessions_repo
from app.telephony.plivo.playout import BATCH_FRAMES
from tests.conftest import TEST_ADMIN_KEY
from tests.live_server import LiveServer
from tests.telephony.echo_runner import GreetingEchoRunner

AUTH = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}


@pytest.fixture
async def echo_server(live_server: LiveServer) -> AsyncIterator[tuple[LiveServer, str]]:
    live_server.state.calls = GreetingEchoRunner()
    async with live_server.state.db.transaction() as s:
        agent, _ = await agents_repo.create(s, {"name": "echo", "prompt": "Echo."})
    yield live_server, agent.id


async def _hello(ws: ClientConnection, agent_id: str, key: str = TEST_ADMIN_KEY) -> None:
    await ws.send(json.dumps({"event": "hello", "api_key": key, "agent_id": agent_id}))


async def _next(ws: ClientConnection, event: str) -> dict[str, Any]:
    """The next message of type `event`, acking checkpoints on the way like a browser does."""
    async with asyncio.timeout(10):
        while True:
            raw = await ws.recv()
            if isinstance(raw, bytes):
                continue
            msg = json.loads(raw)
            if msg["event"] == "checkpoint":
                await ws.send(json.dumps({"event": "playedStream", "name": msg["name"]}))
            if msg["event"] == event:
                return msg  # type: ignore[no-any-return]


async def test_console_page_has_a_strict_csp(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.base_url) as http:
        page = await http.get("/console/")
        script = await http.get("/console/js/main.js")
        worklet = await http.get("/console/js/worklets.js")
        missing = await http.get("/console/js/nope.js")
        escape = await http.get("/console/..%2F..%2Fconfig.py")
        redirect = await http.get("/console")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert '<script type="module" src="/console/js/main.js">' in page.text
    assert "<style" not in page.text and "onclick" not in page.text  # nothing inline
    assert script.headers["content-type"].startswith("text/javascript")
    assert worklet.status_code == 200
    assert missing.status_code == 404 and escape.status_code == 404
    assert redirect.status_code == 307 and redirect.headers["location"] == "/console/"


async def test_live_calls_needs_a_key(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.base_url) as http:
        anonymous = await http.get("/v1/live-calls")
        listed = await http.get("/v1/live-calls", headers=AUTH)
    assert anonymous.status_code == 401
    assert listed.status_code == 200 and listed.json() == {"items": []}


@pytest.mark.parametrize(("hello", "code"), [
    ({"event": "hello", "api_key": "pb_wrong_key_0000000000", "agent_id": "x"}, 1008),
    ({"event": "media"}, 1008),
    ({"event": "hello", "api_key": TEST_ADMIN_KEY, "agent_id": "nobody"}, 4404),
])
async def test_playground_refuses(echo_server: tuple[LiveServer, str], hello: dict[str, Any],
                                  code: int) -> None:
    server, _ = echo_server
    async with connect(f"{server.ws_url}/v1/playground") as ws:
        await ws.send(json.dumps(hello))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code


async def test_playground_call_round_trip(echo_server: tuple[LiveServer, str]) -> None:
    server, agent_id = echo_server
    tone = (np.sin(np.arange(24000) * 2 * np.pi * 440 / 16000) * 8000).astype("<i2")
    async with connect(f"{server.ws_url}/v1/playground") as ws:
        await _hello(ws, agent_id)
        session = await _next(ws, "session")
        assert session["agent_id"] == agent_id and session["sample_rate"] == 16000
        sid = session["session_id"]
        await ws.send(b"\x01")  # an odd byte is dropped, not fatal
        await ws.send(json.dumps({"event": "nonsense"}))  # skipped and counted
        for i in range(0, len(tone), 320):
            await ws.send(tone[i:i + 320].tobytes())
        # The echo comes back as paced L16 16 kHz playAudio, then a checkpoint we ack.
        play = await _next(ws, "playAudio")
        assert play["media"]["contentType"] == "audio/x-l16"
        assert play["media"]["sampleRate"] == 16000
        echoed = np.frombuffer(base64.b64decode(play["media"]["payload"]), dtype="<i2")
        assert len(echoed) % 320 == 0 and 0 < len(echoed) <= 320 * BATCH_FRAMES  # 20 ms frames
        await _next(ws, "checkpoint")
        # Barge-in path: '*' clears what is queued; the browser answers clearedAudio.
        for i in range(0, len(tone), 320):
            await ws.send(tone[i:i + 320].tobytes())
        await ws.send(json.dumps({"event": "dtmf", "dtmf": {"digit": "*"}}))
        await _next(ws, "clearAudio")
        await ws.send(json.dumps({"event": "clearedAudio"}))
        # '#' makes the runner hang up: the browser is told, then the call ends.
        await ws.send(json.dumps({"event": "dtmf", "dtmf": {"digit": "#"}}))
        hangup = await _next(ws, "hangup")
        ended = await _next(ws, "ended")
        assert hangup["reason"] == ended["reason"] == "dtmf_hangup"
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    async with server.state.db.sessionmaker() as s:
        row = await sessions_repo.get(s, sid)
    assert row is not None
    assert (row.status, row.end_reason, row.direction) == ("ended", "dtmf_hangup", "inbound")
    assert row.metadata_ == {"playground": True} and row.agent_id == agent_id
    assert row.call_uuid is not None and row.call_uuid.startswith("browser-")


async def test_caller_closing_the_socket_ends_the_call(
        echo_server: tuple[LiveServer, str]) -> None:
    server, agent_id = echo_server
    async with connect(f"{server.ws_url}/v1/playground") as ws:
        await _hello(ws, agent_id)
        sid = (await _next(ws, "session"))["session_id"]
        await ws.send(json.dumps({"event": "stop"}))
        assert (await _next(ws, "ended"))["reason"] == "caller_hangup"
    async with server.state.db.sessionmaker() as s:
        row = await sessions_repo.get(s, sid)
    assert row is not None and (row.status, row.end_reason) == ("ended", "caller_hangup")
