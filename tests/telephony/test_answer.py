"""The answer URL and Plivo's other callbacks, driven over real HTTP by the simulator."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
from lxml import etree
from plivo.utils.signature_v3 import validate_v3_signature

from app.db.repos import sessions as sessions_repo
from app.telephony.plivo import signature as sig
from app.telephony.plivo.routes import normalize_number
from tests.telephony.conftest import AGENT_NUMBER, CALLER, Edge


async def _session(edge: Edge, call_uuid: str):
    async with edge.server.state.db.session() as s:
        return await sessions_repo.get_by_call_uuid(s, call_uuid)


async def test_signed_answer_returns_stream_xml_and_ringing_session(edge: Edge):
    ans, call_uuid = await edge.sim.answer(to=AGENT_NUMBER, from_=CALLER)
    assert ans.status_code == 200 and ans.kind == "stream"
    # the official SDK's XML library reads the same document
    root = etree.fromstring(ans.body.encode())
    stream = root.find("Stream")
    assert stream.get("bidirectional") == "true" and stream.get("keepCallAlive") == "true"
    assert stream.get("contentType") == "audio/x-mulaw;rate=8000"
    assert stream.get("statusCallbackUrl") == edge.server.base_url + "/plivo/stream-status"
    assert stream.get("statusCallbackMethod") == "POST"
    url = urlsplit(stream.text)
    assert url.scheme == "ws" and url.netloc == f"127.0.0.1:{edge.server.port}"
    row = await _session(edge, call_uuid)
    assert url.path == f"/plivo/stream/{row.id}" and parse_qs(url.query)["token"]
    assert row.status == "ringing" and row.direction == "inbound"
    assert (row.agent_id, row.agent_version) == (edge.agent_id, 1)
    assert row.from_number == CALLER.lstrip("+") and row.to_number == AGENT_NUMBER.lstrip("+")


async def test_answer_signature_checked_by_official_sdk(edge: Edge):
    """Our simulator's signature is what the SDK expects for the URL the server sees."""
    url = edge.server.base_url + "/plivo/answer"
    params = {"CallUUID": str(uuid.uuid4()), "From": "14155550100", "To": "14155550199",
              "Direction": "inbound", "CallStatus": "ringing", "Event": "StartApp"}
    headers = edge.sim.signed_headers("POST", url, params)
    assert validate_v3_signature("POST", url, headers[sig.HEADER_V3_NONCE], edge.auth_token,
                                 headers[sig.HEADER_V3], dict(params))
    async with httpx.AsyncClient() as c:
        r = await c.post(url, data=params, headers=headers)
    assert r.status_code == 200 and "<Stream" in r.text


async def test_get_answer_with_query_params(edge: Edge):
    ans, _ = await edge.sim.answer(to=AGENT_NUMBER, method="GET")
    assert ans.kind == "stream"


async def test_unsigned_wrong_and_replayed_requests_get_403(edge: Edge, caplog):
    caplog.set_level("WARNING")
    ans, cu = await edge.sim.answer(to=AGENT_NUMBER, sign=False)
    assert ans.status_code == 403
    assert "missing X-Plivo-Signature-V3" in caplog.text
    wrong = {sig.HEADER_V3: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
             sig.HEADER_V3_NONCE: "123"}
    ans, _ = await edge.sim.answer(to=AGENT_NUMBER, headers=wrong)
    assert ans.status_code == 403
    # a signature made for another URL (replayed to /plivo/answer) does not verify
    ans, _ = await edge.sim.answer(
        to=AGENT_NUMBER, sign_url=edge.server.base_url + "/plivo/other")
    assert ans.status_code == 403
    assert "signature mismatch" in caplog.text
    # signed by someone else's token
    other = type(edge.sim)(edge.server.base_url, "not-our-token")
    ans, _ = await other.answer(to=AGENT_NUMBER)
    assert ans.status_code == 403
    assert await _session(edge, cu) is None
    for name in ("/plivo/hangup", "/plivo/stream-status", "/plivo/transfer/x"):
        async with httpx.AsyncClient() as c:
            r = await c.post(edge.server.base_url + name, data={"CallUUID": "x"})
        assert r.status_code == 403, name


async def test_main_account_signature_accepted(edge_factory):
    async with edge_factory(plivo={"main_auth_token": "main-account-token-xyz"}) as edge:
        # a subaccount number: -V3 with a token we don't know, -Ma-V3 with the main token
        sim = type(edge.sim)(edge.server.base_url, "unknown-subaccount-token",
                             main_auth_token="main-account-token-xyz")
        ans, _ = await sim.answer(to=AGENT_NUMBER)
        assert ans.kind == "stream"


async def test_unknown_number_gets_spoken_apology(edge: Edge):
    ans, call_uuid = await edge.sim.answer(to="+14155550000")
    assert ans.status_code == 200 and ans.kind == "hangup" and ans.speak_text
    row = await _session(edge, call_uuid)
    assert row.status == "failed" and row.end_reason == "unknown_number"


async def test_agent_query_param_and_sip_to(edge: Edge):
    ans, _ = await edge.sim.answer(to="sip:someone@phones.example.com",
                                   query=f"agent={edge.agent_id}")
    assert ans.kind == "stream"
    ans, _ = await edge.sim.answer(to="sip:someone@phones.example.com", query="agent=nope")
    assert ans.kind == "hangup"


async def test_busy_at_max_concurrent_calls(edge_factory):
    async with edge_factory(limits={"max_concurrent_calls": 1}) as edge:
        first, _ = await edge.sim.answer(to=AGENT_NUMBER)
        assert first.kind == "stream"
        second, call_uuid = await edge.sim.answer(to=AGENT_NUMBER)
        assert second.kind == "hangup" and second.hangup_reason == "busy"
        assert second.speak_text is None
        row = await _session(edge, call_uuid)
        assert row.status == "failed" and row.end_reason == "busy"


async def test_retried_answer_reuses_the_session(edge: Edge):
    a, call_uuid = await edge.sim.answer(to=AGENT_NUMBER)
    b, _ = await edge.sim.answer(to=AGENT_NUMBER, call_uuid=call_uuid)
    assert urlsplit(a.stream_url).path == urlsplit(b.stream_url).path


async def test_hangup_callback_is_idempotent_and_accepts_both_schemes(edge: Edge):
    _, call_uuid = await edge.sim.answer(to=AGENT_NUMBER)
    url = edge.server.base_url + "/plivo/hangup"
    params = {"CallUUID": call_uuid, "CallStatus": "completed", "HangupCause": "NORMAL_CLEARING",
              "Duration": "7", "BillDuration": "60", "Event": "Hangup"}
    for _ in range(3):
        r = await edge.sim.request("POST", url, params)
        assert r.status_code == 200
    row = await _session(edge, call_uuid)
    assert (row.status, row.end_reason, row.hangup_cause) == (
        "ended", "hangup_before_stream", "NORMAL_CLEARING")
    assert row.duration_s == 7.0
    status_url = edge.server.base_url + "/plivo/stream-status"
    for ev in ("StartStream", "started", "StopStream", "stopped", "DroppedStream", "failed",
               "DegradedStream", "SomethingNew"):
        r = await edge.sim.request("POST", status_url, {"Event": ev, "CallUUID": call_uuid,
                                                        "StreamID": "st-1"})
        assert r.status_code == 200
    assert (await _session(edge, call_uuid)).stream_id == "st-1"


async def test_unanswered_outbound_style_hangup_marks_failed(edge: Edge):
    _, call_uuid = await edge.sim.answer(to=AGENT_NUMBER)
    r = await edge.sim.request("POST", edge.server.base_url + "/plivo/hangup",
                               {"CallUUID": call_uuid, "CallStatus": "no-answer",
                                "HangupCause": "NO_ANSWER"})
    assert r.status_code == 200
    row = await _session(edge, call_uuid)
    assert (row.status, row.end_reason) == ("failed", "no_answer")


def test_normalize_number():
    assert normalize_number("14155550100") == "+14155550100"
    assert normalize_number("+1 (415) 555-0100") == "+14155550100"
    assert normalize_number("sip:14155550100@phone.plivo.com") == "+14155550100"
    assert normalize_number("sip:alice@example.com") is None
    assert normalize_number("") is None
