"""Two servers, one service: control, events, admission and streams cross processes."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from app.bus.redis_bus import _cancel_all
from app.db.repos import sessions as sessions_repo
from pipelines.outcomes import ConsultProgress
from tests.bus.conftest import AGENT_NUMBER, Cluster, Node
from tests.conftest import TEST_ADMIN_KEY

AUTH = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}


async def wait_until(predicate: Any, within_s: float = 15.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def session_row(node: Node, session_id: str) -> Any:
    async with node.state.db.session() as s:
        return await sessions_repo.get(s, session_id)


async def ended_row(node: Node, session_id: str, within_s: float = 15.0) -> Any:
    return await _row_when(node, session_id,
                           lambda row: row.status not in sessions_repo.LIVE_STATUSES, within_s)


async def active_row(node: Node, session_id: str, within_s: float = 15.0) -> Any:
    """The row once the stream's activation is in the database: it goes through the hosting
    process's outbox (a file, fsynced), so it may land after the caller already hears audio."""
    return await _row_when(node, session_id, lambda row: row.status == "active", within_s)


async def _row_when(node: Node, session_id: str, done: Callable[[Any], bool],
                    within_s: float) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        row = await session_row(node, session_id)
        if row is not None and done(row):
            return row
        if loop.time() > deadline:
            raise AssertionError(f"session {session_id} still {row and row.status}")
        await asyncio.sleep(0.05)


async def post(node: Node, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=node.server.base_url, trust_env=False) as c:
        return await c.post(path, json=body, headers=AUTH)


async def ws(node: Node, path: str) -> ClientConnection:
    conn = await connect(f"{node.server.ws_url}{path}", proxy=None,
                         additional_headers=AUTH)
    hello = json.loads(await asyncio.wait_for(conn.recv(), 10))
    assert hello["type"] == "stream.subscribed"
    return conn


async def frames_until_ended(conn: ClientConnection, session_id: str,
                             within_s: float = 20.0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(within_s):
        while True:
            frame = json.loads(await conn.recv())
            if frame.get("session_id") != session_id:
                continue
            out.append(frame)
            if frame["type"] == "session.ended":
                return out


async def _hosted_on(node: Any, call: Any) -> str:
    """The connected call's session id, once `node`'s runner is carrying it."""
    sid = call.session_id
    assert sid is not None
    await wait_until(lambda: sid in node.runner.calls, what="the call on its host")
    return str(sid)


async def test_control_sent_to_the_other_node_reaches_the_call(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    call = cluster.wire(a.sim.call(to=AGENT_NUMBER))
    async with call:
        sid = await _hosted_on(a, call)
        hosted = a.runner.calls[sid]

        r = await post(b, f"/v1/sessions/{sid}/say", {"text": "Hello from b."})
        assert r.status_code == 202, r.text
        await wait_until(lambda: call.agent_spoke, what="the caller hearing the say")
        assert hosted.said == ["Hello from b."]

        r = await post(b, f"/v1/sessions/{sid}/inject", {"text": "VIP caller."})
        assert r.status_code == 202 and hosted.injected == ["VIP caller."]

        # Reconfiguration reaches the owner too, with its answer and its refusals.
        async with httpx.AsyncClient(base_url=b.server.base_url, trust_env=False) as c:
            r = await c.patch(f"/v1/sessions/{sid}", json={"prompt": "Be terse."},
                              headers=AUTH)
            assert (r.status_code, r.json()["fields"]) == (202, ["prompt"]), r.text
            r = await c.patch(f"/v1/sessions/{sid}", json={"tools": [{}]}, headers=AUTH)
            assert r.status_code == 422 and r.json()["errors"][0]["field"] == "tools.0.name"
            r = await c.put(f"/v1/sessions/{sid}/background", json={"sound": "office"},
                            headers=AUTH)
            assert r.status_code == 202 and hosted.background == ("office", 0.5, True)
            r = await c.delete(f"/v1/sessions/{sid}/background", headers=AUTH)
            assert r.status_code == 202 and hosted.background is None
        r = await post(b, f"/v1/sessions/{sid}/play",
                       {"audio_data": base64.b64encode(b"RIFF....WAVE").decode()})
        assert (r.status_code, r.json()["play_id"]) == (202, "play-1")
        assert hosted.updates[0]["prompt"] == "Be terse." and hosted.played == [b"RIFF....WAVE"]

        async with httpx.AsyncClient(base_url=b.server.base_url, trust_env=False) as c:
            r = await c.patch(f"/v1/sessions/{sid}/state", json={"tier": "gold"},
                              headers=AUTH)
        assert r.status_code == 200
        await wait_until(lambda: hosted.state.get("tier") == "gold",
                         what="the live state on a")

        # A warm transfer's consult leg reports to whichever process Plivo reaches.
        async with httpx.AsyncClient(base_url=b.server.base_url, trust_env=False) as c:
            r = await c.post(f"/plivo/consult/{sid}/hangup",
                             data={"CallUUID": "leg-1", "CallStatus": "busy"})
        assert r.status_code == 200
        assert hosted.consults == [("leg-1", ConsultProgress.ENDED, "busy")]

        r = await post(b, f"/v1/sessions/{sid}/hangup", {"reason": "api_hangup"})
        assert r.status_code == 202, r.text
        await call.wait_closed(within_s=15)
    row = await ended_row(b, sid)
    assert row.status == "ended"
    # Over: the next request is a conflict, wherever it is sent.
    r = await post(b, f"/v1/sessions/{sid}/say", {"text": "too late"})
    assert r.status_code == 409


async def test_events_of_a_call_on_a_reach_websockets_on_b(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    everything = await ws(b, "/v1/events")
    # Junk on the bus is skipped, never the end of the listener.
    await cluster.redis.publish(f"{cluster.prefix}:events", "not json")
    await cluster.redis.publish(f"{cluster.prefix}:events", '{"node": "x", "env": {"id": 1}}')
    try:
        call = cluster.wire(a.sim.call(to=AGENT_NUMBER))
        async with call:
            sid = await _hosted_on(a, call)
            one = await ws(b, f"/v1/sessions/{sid}/events")
            for i in range(3):
                await a.runner.calls[sid].say(f"line {i}")
        seen = await frames_until_ended(everything, sid)
        replayed = await frames_until_ended(one, sid)
    finally:
        await everything.close()
    types = [f["type"] for f in seen]
    assert types[0] == "session.started" and types[-1] == "session.ended"
    assert types.count("agent.speech_started") == 3
    assert [f["seq"] for f in seen] == list(range(1, len(seen) + 1))
    said = [f["data"]["text"] for f in seen if f["type"] == "agent.speech_started"]
    assert said == ["line 0", "line 1", "line 2"]
    # The session stream on b replays what b had seen of the call, then follows it.
    assert [f["id"] for f in replayed] == [f["id"] for f in seen]


async def test_admission_limit_holds_across_processes(cluster_factory: Any) -> None:
    async with cluster_factory(max_concurrent_calls=1) as cluster:
        a, b = cluster.a, cluster.b
        first = cluster.wire(a.sim.call(to=AGENT_NUMBER))
        async with first:
            await wait_until(lambda: first.session_id in a.runner.calls, what="call on a")
            refused, _ = await b.sim.answer(to=AGENT_NUMBER)
            assert refused.kind == "hangup" and refused.hangup_reason == "busy"
        await wait_until(lambda: a.state.extras["app.telephony.plivo"].admission.in_use == 0,
                         what="a's slot back")
        second = cluster.wire(b.sim.call(to=AGENT_NUMBER))
        async with second:
            assert second.result.answer.kind == "stream"
            await wait_until(lambda: second.session_id in b.runner.calls, what="call on b")


async def test_stream_connecting_to_another_process_than_the_answer(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    call = cluster.wire(b.sim.call(to=AGENT_NUMBER))
    # Plivo fetched the answer URL from a; its stream WebSocket lands on b.
    answer, _ = await a.sim.answer(to=AGENT_NUMBER, call_uuid=call.call_uuid)
    assert answer.kind == "stream"
    call.result.answer = answer
    await call.connect(answer.stream_url, answer.content_type)
    try:
        sid = call.session_id
        assert sid is not None
        await wait_until(lambda: sid in b.runner.calls, what="the call hosted on b")
        # a let go of its reservation: b holds the seat and a counts no call.
        edge_a = a.state.extras["app.telephony.plivo"]
        await wait_until(lambda: edge_a.admission.in_use == 0, what="a's reservation gone")
        r = await post(a, f"/v1/sessions/{sid}/say", {"text": "Through a."})
        assert r.status_code == 202, r.text
        await wait_until(lambda: call.agent_spoke, what="the caller hearing it")
        assert (await active_row(a, sid)).status == "active"
    finally:
        await call.hangup()
    row = await ended_row(a, sid)
    assert row.status == "ended"


async def test_calls_of_a_lost_process_are_closed_by_a_survivor(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    call = cluster.wire(a.sim.call(to=AGENT_NUMBER))
    async with call:
        sid = await _hosted_on(a, call)
        watch = await ws(b, f"/v1/sessions/{sid}/events")
        # a stops heartbeating as if frozen or killed (its node key lapses after owner_ttl_s).
        bus_a = a.state.extras["app.bus"]
        # Cancelled as stop() does it: the Redis client can turn a cancel that lands inside a
        # command into a connection error, which the heartbeat's retry swallows (a single
        # cancel then left a alive now and then, and nothing was ever lost).
        await _cancel_all(bus_a._tasks)
        assert all(t.done() for t in bus_a._tasks)
        frames = await frames_until_ended(watch, sid, within_s=15)
        assert frames[-1]["data"]["reason"] == "node_lost"
        row = await ended_row(b, sid)
        assert (row.status, row.end_reason) == ("interrupted", "node_lost")
        assert await b.state.extras["app.bus"].owner(sid) is None


async def test_redis_restart_mid_call(cluster_factory: Any, private_redis: Any) -> None:
    """Redis goes away and comes back empty: the call goes on, control resumes."""
    async with cluster_factory(redis_url=private_redis.url) as cluster:
        a, b = cluster.a, cluster.b
        call = cluster.wire(a.sim.call(to=AGENT_NUMBER))
        async with call:
            sid = await _hosted_on(a, call)
            private_redis.stop()
            # Control of a's call through a itself needs no bus; the call is alive.
            r = await post(a, f"/v1/sessions/{sid}/say", {"text": "Still here."})
            assert r.status_code == 202
            await wait_until(lambda: call.agent_spoke, what="the caller hearing a")
            r = await post(b, f"/v1/sessions/{sid}/say", {"text": "Anyone?"})
            assert r.status_code == 404  # b cannot know who hosts it meanwhile
            private_redis.start()
            bus_b = b.state.extras["app.bus"]

            async def owner_back() -> bool:
                return await bus_b.owner(sid) == "a"

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while not await owner_back():
                assert loop.time() < deadline, "a's seat not written back"
                await asyncio.sleep(0.1)
            r = await post(b, f"/v1/sessions/{sid}/say", {"text": "Back again."})
            assert r.status_code == 202, r.text
            await wait_until(lambda: a.runner.calls[sid].said[-1:] == ["Back again."],
                             what="the say through b")
            assert not call.closed
        row = await ended_row(b, sid)
        assert row.status == "ended"


async def test_draining_process_keeps_its_calls_while_the_other_takes_new_ones(
        cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    call = cluster.wire(a.sim.call(to=AGENT_NUMBER))
    async with call:
        sid = await _hosted_on(a, call)
        drain = asyncio.create_task(a.state.drain())  # what SIGTERM starts
        async with httpx.AsyncClient(base_url=a.server.base_url, trust_env=False) as c:
            assert (await c.get("/readyz")).status_code == 503
        refused, _ = await a.sim.answer(to=AGENT_NUMBER)
        assert refused.kind == "hangup" and refused.hangup_reason == "busy"
        other = cluster.wire(b.sim.call(to=AGENT_NUMBER))
        async with other:
            assert other.result.answer.kind == "stream"
            await wait_until(lambda: other.session_id in b.runner.calls, what="call on b")
            # a's call goes on, controlled through b.
            r = await post(b, f"/v1/sessions/{sid}/say", {"text": "Still with you."})
            assert r.status_code == 202, r.text
            await wait_until(lambda: call.agent_spoke, what="the caller hearing it")
            assert not drain.done()
    await asyncio.wait_for(drain, 30)  # the drain ends with a's last call
    assert (await ended_row(b, sid)).status == "ended"
