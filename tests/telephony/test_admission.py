"""Admission control and graceful drain: unit level, then with live calls on the real server."""

from __future__ import annotations

import asyncio
import signal

import httpx

from app.calls.admission import CallAdmission
from app.db.repos import sessions as sessions_repo
from tests.telephony.audio_checks import heard_ms, tone
from tests.telephony.conftest import AGENT_NUMBER


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def test_limits_reservations_and_release():
    clock = Clock()
    a = CallAdmission(2, reserve_timeout_s=60, clock=clock)
    assert a.try_admit("s1") and a.try_admit("s1")  # a retried answer keeps its slot
    assert a.try_admit("s2") and not a.try_admit("s3")
    assert a.rejected == 1
    a.release("s1")
    assert a.try_admit("s3")

    async def end(reason: str) -> None: ...

    assert a.attach("s2", end) and a.live == 1
    clock.t = 61  # s3 never streamed: its reservation lapses, s2 is live and stays
    assert a.in_use == 1 and a.holds("s2") and not a.holds("s3")
    assert a.try_admit("s4", ttl_s=300)
    clock.t = 200
    assert a.holds("s4")  # a ringing outbound call may wait longer


async def test_drain_waits_for_calls_then_ends_stragglers():
    clock = Clock()
    a = CallAdmission(10, clock=clock)
    ended: list[tuple[str, str]] = []

    def ender(sid: str):
        async def end(reason: str) -> None:
            ended.append((sid, reason))
            a.release(sid)

        return end

    for sid in ("polite", "stubborn"):
        assert a.try_admit(sid) and a.attach(sid, ender(sid))
    a.try_admit("answered-late")
    a.try_admit("never-streamed")
    drain = asyncio.create_task(a.drain(1.0))
    await asyncio.sleep(0.05)
    assert a.draining and not a.try_admit("new")
    # a call answered just before the drain may still connect its stream
    assert a.attach("answered-late", ender("answered-late"))
    a.release("answered-late")
    clock.t = 11  # ...but one that never connects is given up on
    await asyncio.sleep(0.3)
    assert not a.holds("never-streamed")
    a.release("polite")  # finishes on its own during the drain
    assert await asyncio.wait_for(drain, 5) == 1
    assert ended == [("stubborn", "shutdown")]
    assert a.in_use == 0


async def test_drain_with_no_calls_returns_at_once():
    assert await asyncio.wait_for(CallAdmission(1).drain(30), 1) == 0


async def _echo_heard(call, freq: float) -> None:
    call.say(tone(freq, 0.4, 8000), 8000)
    await call.wait_for(lambda: heard_ms(call.far.recording(), 8000, freq) >= 300, within_s=10)


async def test_sigterm_drain_lets_the_live_call_finish(edge_factory):
    async with edge_factory(limits={"drain_timeout_s": 20}) as edge:
        call = edge.wire(edge.sim.call(to=AGENT_NUMBER))
        async with call:
            await _echo_heard(call, 1000)
            edge.server.server.handle_exit(signal.SIGTERM, None)  # what SIGTERM runs
            await call.wait_for(lambda: edge.server.state.draining, within_s=5)
            busy, _ = await edge.sim.answer(to=AGENT_NUMBER)
            assert busy.kind == "hangup" and busy.hangup_reason == "busy"
            async with httpx.AsyncClient(base_url=edge.server.base_url) as c:
                ready = await c.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["calls_admitting"] != "ok"
            await _echo_heard(call, 700)  # the live call carries on, uvicorn waits
            assert not edge.server.task.done()
        # the caller hung up: the drain ends and the server stops, nothing was cut off
        await asyncio.wait_for(edge.server.task, 20)
        assert call.result.closed_by == "caller"
        async with edge.server.state.db.session() as s:
            row = await sessions_repo.get_by_call_uuid(s, call.call_uuid)
        assert (row.status, row.end_reason) == ("ended", "stream_closed")
        assert not edge.rest.calls_to("DELETE", "/")


async def test_drain_timeout_hangs_up_politely(edge_factory):
    async with edge_factory(limits={"drain_timeout_s": 0.5}) as edge:
        call = edge.wire(edge.sim.call(to=AGENT_NUMBER))
        async with call:
            await _echo_heard(call, 1000)
            await asyncio.wait_for(edge.server.state.drain(), 20)
            assert call.closed
        assert len(edge.rest.calls_to("DELETE", f"/Call/{call.call_uuid}/")) == 1
        async with edge.server.state.db.session() as s:
            row = await sessions_repo.get_by_call_uuid(s, call.call_uuid)
        assert (row.status, row.end_reason) == ("ended", "shutdown")


async def test_answered_call_whose_stream_never_comes_is_closed(edge_factory):
    import time

    async with edge_factory() as edge:
        ans, call_uuid = await edge.sim.answer(to=AGENT_NUMBER)
        assert ans.kind == "stream"
        admission = edge.server.state.extras["app.telephony.plivo"].admission
        admission.clock = lambda: time.monotonic() + 3600  # an hour later, still no stream
        assert admission.in_use == 0
        for _ in range(100):
            async with edge.server.state.db.session() as s:
                row = await sessions_repo.get_by_call_uuid(s, call_uuid)
            if row.status != "ringing":
                break
            await asyncio.sleep(0.02)
        assert (row.status, row.end_reason) == ("failed", "stream_never_connected")
