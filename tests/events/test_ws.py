"""`WS /v1/sessions/{id}/events` and `WS /v1/events` on a real server."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.config import Settings
from app.events.service import EventsService
from pipelines import events as ev
from tests.conftest import TEST_ADMIN_KEY
from tests.events.conftest import call_events, make_session
from tests.live_server import LiveServer, run_live_server

AUTH = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}


async def _recv_json(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def _close_code(ws: ClientConnection) -> tuple[int | None, str | None]:
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    except ConnectionClosed as exc:
        return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, None)


def _events(server: LiveServer) -> EventsService:
    return server.state.events  # type: ignore[no-any-return]


async def test_session_stream_sees_the_complete_ordered_call(live_server: LiveServer) -> None:
    sid, agent_id = await make_session(live_server.state.db)
    url = f"{live_server.ws_url}/v1/sessions/{sid}/events"
    async with connect(url, additional_headers=AUTH) as ws:
        hello = await _recv_json(ws)
        assert hello == {"type": "stream.subscribed", "session_id": sid, "last_seq": 0}
        published = [_events(live_server).publish(e) for e in call_events(sid, agent_id)]
        got = [await _recv_json(ws) for _ in published]
        assert await _close_code(ws) == (1000, "session ended")
    assert [g["id"] for g in got] == [p.id for p in published]
    assert [g["seq"] for g in got] == list(range(1, len(published) + 1))
    assert [g["type"] for g in got] == [p.type for p in published]
    assert got[8]["data"] == {"call_id": "call_0", "name": "weather",
                              "arguments": {"city": "Paris"}}


async def test_late_subscriber_gets_the_replay_then_live_events(live_server: LiveServer) -> None:
    sid, agent_id = await make_session(live_server.state.db)
    seq = call_events(sid, agent_id)
    events = _events(live_server)
    for e in seq[:5]:
        events.publish(e)
    url = f"{live_server.ws_url}/v1/sessions/{sid}/events?api_key={TEST_ADMIN_KEY}&since=2"
    async with connect(url) as ws:
        assert (await _recv_json(ws))["last_seq"] == 5
        for e in seq[5:]:
            events.publish(e)
        got = [await _recv_json(ws) for _ in range(len(seq) - 2)]
        assert [g["seq"] for g in got] == list(range(3, len(seq) + 1))


async def test_type_filter_and_global_stream(live_server: LiveServer) -> None:
    sid1, _ = await make_session(live_server.state.db)
    sid2, _ = await make_session(live_server.state.db)
    events = _events(live_server)
    url = f"{live_server.ws_url}/v1/events?types=user.dtmf"
    async with connect(url, additional_headers=AUTH) as ws:
        await _recv_json(ws)
        for sid in (sid1, sid2):
            events.publish(ev.UserSpeechStarted(session_id=sid))
            events.publish(ev.UserDtmf(session_id=sid, digit="5"))
        got = [await _recv_json(ws) for _ in range(2)]
    assert [(g["session_id"], g["type"], g["seq"]) for g in got] == [
        (sid1, "user.dtmf", 2), (sid2, "user.dtmf", 2)]


@pytest.mark.parametrize("query,headers", [
    ("", {}),
    ("?api_key=pb_wrong_key", {}),
    ("", {"Authorization": "Bearer pb_wrong_key"}),
])
async def test_unauthenticated_streams_are_closed_with_1008(
    live_server: LiveServer, query: str, headers: dict[str, str]
) -> None:
    async with connect(f"{live_server.ws_url}/v1/events{query}", additional_headers=headers) as ws:
        code, _ = await _close_code(ws)
    assert code == 1008


async def test_unknown_and_ended_sessions(live_server: LiveServer) -> None:
    async with connect(f"{live_server.ws_url}/v1/sessions/nope/events",
                       additional_headers=AUTH) as ws:
        assert await _close_code(ws) == (4404, "session not found")
    sid, _ = await make_session(live_server.state.db, status="ended")
    async with connect(f"{live_server.ws_url}/v1/sessions/{sid}/events",
                       additional_headers=AUTH) as ws:
        assert (await _recv_json(ws))["type"] == "stream.subscribed"
        assert await _close_code(ws) == (1000, "session ended")
    # Resuming after the end of a call the bus still remembers: nothing left, closed at once.
    sid, agent_id = await make_session(live_server.state.db)
    for e in call_events(sid, agent_id):
        _events(live_server).publish(e)
    last = _events(live_server).bus.last_seq(sid)
    async with connect(f"{live_server.ws_url}/v1/sessions/{sid}/events?since={last}",
                       additional_headers=AUTH) as ws:
        assert (await _recv_json(ws))["last_seq"] == last
        assert await _close_code(ws) == (1000, "session ended")


async def test_slow_consumer_is_dropped_and_the_call_is_not_slowed(
    settings_factory: Callable[..., Settings],
) -> None:
    async with run_live_server(settings_factory(events={"ws_queue_size": 20})) as server:
        sid, _ = await make_session(server.state.db)
        events = _events(server)
        # The slow client never reads; a tiny receive buffer makes the server's socket back up
        # after a few hundred kilobytes instead of tens of megabytes of kernel buffers.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((server.host, server.port))
        sock.setblocking(False)
        slow = await connect(f"{server.ws_url}/v1/sessions/{sid}/events",
                             additional_headers=AUTH, sock=sock, max_queue=1,
                             compression=None)  # deflate would shrink the burst to nothing
        fast = await connect(f"{server.ws_url}/v1/events", additional_headers=AUTH)
        await _recv_json(slow)
        await _recv_json(fast)
        text = "x" * 32_000
        n = 400
        got: list[dict[str, Any]] = []
        progress = asyncio.Event()

        async def read_fast() -> None:
            for _ in range(n):
                got.append(await _recv_json(fast))
                progress.set()

        reader = asyncio.create_task(read_fast())
        for i in range(n):
            events.publish(ev.UserTranscription(session_id=sid, text=text))
            # Paced by what the fast client has read, not by the clock: it stays well inside
            # its queue however loaded the machine is, while the slow one never reads.
            while i - len(got) >= 10 and not reader.done():
                progress.clear()
                await asyncio.wait_for(progress.wait(), 10)
        await reader
        assert [g["seq"] for g in got] == list(range(1, n + 1))
        assert events.bus.dropped_subscribers_total == 1
        assert events.counters()["event_subscribers_dropped_total"] == 1
        code, reason = await _close_code(slow)
        assert (code, reason) == (1013, "slow consumer")
        await fast.close()
