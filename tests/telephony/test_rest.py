"""The Plivo REST client against a fake Plivo API over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64

import pytest

from app.telephony.plivo.rest import PlivoApiError, PlivoNotConfigured, PlivoRestClient
from tests.fakes.plivo_rest import FakePlivoRest


@pytest.fixture
async def client(plivo_rest: FakePlivoRest):
    c = PlivoRestClient(plivo_rest.api_base, plivo_rest.auth_id, plivo_rest.auth_token,
                        backoff_s=0.01, max_backoff_s=0.05)
    yield c
    await c.aclose()


async def test_wire_habits_auth_json_trailing_slash(client, plivo_rest: FakePlivoRest):
    plivo_rest.live_calls.add("call-1")
    await client.transfer("call-1", aleg_url="https://pb.example.com/plivo/transfer/s1")
    rec = plivo_rest.requests[-1]
    assert rec.method == "POST" and rec.path == f"/v1/Account/{plivo_rest.auth_id}/Call/call-1/"
    assert rec.headers["content-type"] == "application/json"
    expected = base64.b64encode(f"{plivo_rest.auth_id}:{plivo_rest.auth_token}".encode())
    assert rec.headers["authorization"] == f"Basic {expected.decode()}"
    assert rec.body == {"legs": "aleg", "aleg_url": "https://pb.example.com/plivo/transfer/s1",
                        "aleg_method": "POST"}
    assert rec.status == 202


async def test_hangup_and_already_gone(client, plivo_rest: FakePlivoRest):
    plivo_rest.live_calls.add("call-1")
    assert await client.hangup("call-1") is True
    assert plivo_rest.requests[-1].status == 204
    assert await client.hangup("call-1") is False  # 404: already gone
    assert plivo_rest.requests[-1].status == 404


async def test_send_dtmf_and_make_call(client, plivo_rest: FakePlivoRest):
    plivo_rest.live_calls.add("call-1")
    out = await client.send_dtmf("call-1", "12#")
    assert out["message"] == "digits sent"
    assert plivo_rest.requests[-1].body == {"digits": "12#", "leg": "aleg"}
    made = await client.make_call(from_="14155550100", to="14155550123",
                                  answer_url="https://pb.example.com/plivo/answer?session_id=s",
                                  hangup_url="https://pb.example.com/plivo/hangup",
                                  ring_timeout=30, time_limit=600)
    assert made["request_uuid"] in plivo_rest.ringing
    body = plivo_rest.requests[-1].body
    assert body["answer_method"] == "POST" and body["ring_timeout"] == 30
    assert body["hangup_url"] == "https://pb.example.com/plivo/hangup"


async def test_retries_5xx_then_succeeds(client, plivo_rest: FakePlivoRest):
    plivo_rest.live_calls.add("call-1")
    plivo_rest.fail_next(503, times=2)
    assert await client.hangup("call-1") is True
    assert [r.status for r in plivo_rest.requests] == [503, 503, 204]


async def test_respects_retry_after_on_429(client, plivo_rest: FakePlivoRest):
    plivo_rest.live_calls.add("call-1")
    plivo_rest.fail_next(429, retry_after=0.3)
    await client.send_dtmf("call-1", "5")
    first, second = plivo_rest.requests
    assert (first.status, second.status) == (429, 202)
    assert second.at - first.at >= 0.29  # waited as told, not the 10 ms backoff


async def test_gives_up_after_max_retries(client, plivo_rest: FakePlivoRest):
    plivo_rest.live_calls.add("call-1")
    plivo_rest.fail_next(500, times=10)
    with pytest.raises(PlivoApiError) as err:
        await client.hangup("call-1")
    assert err.value.status == 500
    assert len(plivo_rest.requests) == client.max_retries + 1


async def test_client_errors_are_not_retried(client, plivo_rest: FakePlivoRest):
    with pytest.raises(PlivoApiError) as err:
        await client.make_call(from_="1", to="", answer_url="")
    assert err.value.status == 400 and len(plivo_rest.requests) == 1
    bad = PlivoRestClient(plivo_rest.api_base, plivo_rest.auth_id, "wrong-token",
                          backoff_s=0.01)
    with pytest.raises(PlivoApiError) as err:
        await bad.hangup("x")
    assert err.value.status == 401 and "wrong-token" not in str(err.value)
    await bad.aclose()


async def test_unreachable_and_unconfigured():
    c = PlivoRestClient("http://127.0.0.1:9/v1", "MAX", "tok", backoff_s=0.01, max_retries=1)
    with pytest.raises(PlivoApiError, match="cannot reach Plivo"):
        await c.hangup("x")
    await c.aclose()
    c = PlivoRestClient("http://127.0.0.1:9/v1", "", None)
    assert not c.configured
    with pytest.raises(PlivoNotConfigured):
        await c.hangup("x")
    await c.aclose()
