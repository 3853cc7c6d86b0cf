"""The stream WebSocket end to end: the simulator (as Plivo) against the real server."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.db.repos import sessions as sessions_repo
from app.telephony.plivo.signature import websocket_signed_url
from tests.telephony.audio_checks import heard_ms, tone
from tests.telephony.conftest import AGENT_NUMBER, Edge


async def _row(edge: Edge, session_id: str | None = None, call_uuid: str | None = None):
    async with edge.server.state.db.session() as s:
        if session_id:
            return await sessions_repo.get(s, session_id)
        return await sessions_repo.get_by_call_uuid(s, call_uuid)


async def _wait_row(edge: Edge, call_uuid: str, pred, within_s: float = 10.0):
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        row = await _row(edge, call_uuid=call_uuid)
        if row is not None and pred(row):
            return row
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"session state not reached: {row and row.status}")
        await asyncio.sleep(0.05)


async def _wait_tone_heard(call, rate: int, ms: float) -> None:
    await call.wait_for(lambda: heard_ms(call.far.recording(), rate, 1000) >= ms, within_s=15)


async def test_echo_call_round_trip(edge: Edge):
    call = edge.wire(edge.sim.call(to=AGENT_NUMBER))
    async with call:
        assert call.result.answer.kind == "stream"
        row = await _wait_row(edge, call.call_uuid, lambda r: r.status == "active")
        assert row.stream_id == call.stream_id and row.answered_at is not None
        call.say(tone(1000, 1.0, 8000), 8000)
        # the echo runner sends it straight back; wait until the tone has played out here
        # (played_ms alone also counts the echoed silence before it)
        await _wait_tone_heard(call, 8000, 900)
        await call.wait_for(lambda: "echo-1" in call.result.checkpoints_acked, within_s=10)
    heard = call.result.heard
    assert heard_ms(heard, 8000, 1000) >= 900
    assert call.result.checkpoints_acked == call.result.checkpoints_received[
        : len(call.result.checkpoints_acked)]
    assert call.result.checkpoints_acked[0] == "echo-1"
    assert call.result.play_errors == []
    row = await _wait_row(edge, call.call_uuid, lambda r: r.status == "ended")
    assert row.end_reason == "stream_closed" and row.hangup_cause == "NORMAL_CLEARING"
    assert row.duration_s is not None
    assert "playedStream 'echo-1' sent" in call.result.format_timeline()


async def test_echo_call_on_l16_16k(edge_factory):
    async with edge_factory(plivo={"content_type": "audio/x-l16;rate=16000"}) as edge:
        call = edge.wire(edge.sim.call(to=AGENT_NUMBER))
        async with call:
            assert call.codec.content_type == "audio/x-l16;rate=16000"
            call.say(tone(1000, 0.6, 16000), 16000)
            await _wait_tone_heard(call, 16000, 500)
        assert heard_ms(call.result.heard, 16000, 1000) >= 500
        assert call.result.play_errors == []


async def test_dtmf_both_ways_and_rest_hangup(edge: Edge):
    call = edge.wire(edge.sim.call(to=AGENT_NUMBER))
    async with call:
        await call.send_dtmf("5")
        await call.wait_for(lambda: call.result.dtmf_received == ["5"], within_s=5)
        await call.send_dtmf("#")  # echo runner: hang up through the REST API
        await call.wait_closed(within_s=10)
    hangups = edge.rest.calls_to("DELETE", f"/Call/{call.call_uuid}/")
    assert len(hangups) == 1 and hangups[0].status == 204
    row = await _wait_row(edge, call.call_uuid, lambda r: r.status == "ended")
    assert row.end_reason == "dtmf_hangup"


def _with_query(url: str, **params: str) -> str:
    u = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(u.query).items()}
    q.update(params)
    return urlunsplit((u.scheme, u.netloc, u.path, urlencode(q), ""))


async def _close_code(edge: Edge, url: str, sign: bool = True) -> int | None:
    headers = edge.sim.signed_headers("GET", websocket_signed_url(url), None) if sign else {}
    async with connect(url, additional_headers=headers, proxy=None) as ws:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        return ws.close_code


async def test_websocket_without_valid_token_is_closed_1008(edge: Edge, caplog):
    caplog.set_level("WARNING")
    a, _ = await edge.sim.answer(to=AGENT_NUMBER)
    b, _ = await edge.sim.answer(to=AGENT_NUMBER)
    url = a.stream_url
    no_token = urlunsplit(urlsplit(url)._replace(query=""))
    assert await _close_code(edge, no_token) == 1008
    assert await _close_code(edge, _with_query(url, token="123.abc")) == 1008
    # b's token on a's session (bound to another session and call)
    b_token = parse_qs(urlsplit(b.stream_url).query)["token"][0]
    assert await _close_code(edge, _with_query(url, token=b_token)) == 1008
    unknown = url.replace(urlsplit(url).path, "/plivo/stream/nosuchsession")
    assert await _close_code(edge, unknown) == 1008
    # the right token but no Plivo signature on the upgrade
    assert await _close_code(edge, url, sign=False) == 1008
    assert "stream token does not match" in caplog.text
    assert "upgrade signature" in caplog.text
    # and the right token with a signature: accepted (the server waits for start)
    headers = edge.sim.signed_headers("GET", websocket_signed_url(url), None)
    async with connect(url, additional_headers=headers, proxy=None) as ws:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)


async def test_expired_token_is_closed_1008(edge_factory):
    async with edge_factory(security={"stream_token_ttl_s": 5}) as edge:
        a, _ = await edge.sim.answer(to=AGENT_NUMBER)
        token = parse_qs(urlsplit(a.stream_url).query)["token"][0]
        expiry, mac = token.split(".")
        expired = _with_query(a.stream_url, token=f"{int(expiry) - 10}.{mac}")
        assert await _close_code(edge, expired) == 1008
