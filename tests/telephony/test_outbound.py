"""`POST /v1/calls`: outbound calls through the (fake) Plivo REST API, answered by the simulator."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

import httpx

from app.db.repos import agents as agents_repo
from app.db.repos import sessions as sessions_repo
from tests.telephony.conftest import Edge, ended_session
from tests.telephony.scripted import ScriptRunner


async def _session(edge: Edge, session_id: str):
    async with edge.server.state.db.session() as s:
        return await sessions_repo.get(s, session_id)


async def _post_call(edge: Edge, headers, **body):
    payload = {"agent_id": edge.agent_id, "to": "+14155550123", "from": "+14155550100", **body}
    async with httpx.AsyncClient(base_url=edge.server.base_url) as c:
        return await c.post("/v1/calls", json=payload, headers=headers)


async def test_outbound_call_is_pinned_to_the_agent_version(edge: Edge, admin_headers):
    async def script(info, transport, out):
        out.update(version=info.agent_version, config=info.agent_config,
                   direction=info.direction, to=info.to_number)
        await transport.hangup("done")
        return "done"

    runner = ScriptRunner(script)
    edge.server.state.calls = runner
    may_answer = asyncio.Event()
    started = asyncio.Event()
    calls = {}

    async def on_make_call(body, request_uuid):
        await may_answer.wait()  # the callee picks up after the agent was edited
        edge.rest.answered(request_uuid)
        query = urlsplit(body["answer_url"]).query
        call = edge.sim.call(to=body["to"], from_=body["from"], call_uuid=request_uuid,
                             direction="outbound", answer_query=query)
        calls["c"] = call
        started.set()
        await call.start()

    edge.rest.on_make_call = on_make_call
    edge.rest.on_hangup = lambda uuid: calls["c"].remote_hangup()

    r = await _post_call(edge, admin_headers, metadata={"crm_id": "42"})
    assert r.status_code == 201, r.text
    out = r.json()
    sid = out["session_id"]
    assert out["agent_version"] == 1 and out["status"] == "ringing"
    row = await _session(edge, sid)
    assert (row.status, row.direction, row.agent_version) == ("ringing", "outbound", 1)
    assert row.request_uuid == out["request_uuid"] and row.metadata_ == {"crm_id": "42"}
    made = edge.rest.calls_to("POST", "/Call/")[0].body
    assert made["from"] == "14155550100" and made["to"] == "14155550123"
    assert parse_qs(urlsplit(made["answer_url"]).query) == {"session_id": [sid]}
    assert made["answer_url"].startswith(edge.server.base_url + "/plivo/answer")
    assert made["hangup_url"].startswith(edge.server.base_url + "/plivo/hangup")

    async with edge.server.state.db.transaction() as s:
        agent = await agents_repo.get(s, edge.agent_id)
        await agents_repo.add_version(s, agent, {"name": "Edited", "prompt": "v2"})
    may_answer.set()
    await asyncio.wait_for(started.wait(), 10)
    await calls["c"].wait_closed(within_s=10)
    await calls["c"].hangup()
    # No in-process handoff for an outbound call: the edge passes the pinned version and the
    # call host reads it (tests/calls/test_host_setup_failure.py).
    assert runner.result["version"] == 1 and runner.result["config"] is None
    assert runner.result["direction"] == "outbound"
    row = await ended_session(edge, session_id=sid)
    assert row.status == "ended" and row.end_reason == "done"
    assert row.call_uuid == out["request_uuid"]


async def test_outbound_errors(edge: Edge, admin_headers):
    r = await _post_call(edge, admin_headers, agent_id="nope")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "agent_id"
    r = await _post_call(edge, admin_headers, to="not a number")
    assert r.status_code == 422
    edge.rest.fail_next(400)
    r = await _post_call(edge, admin_headers)
    assert r.status_code == 502 and "Plivo refused" in r.json()["detail"]
    async with edge.server.state.db.session() as s:
        page = await sessions_repo.list_sessions(s)
    assert [(x.status, x.end_reason) for x in page.items] == [("failed", "dial_failed")]
    async with httpx.AsyncClient(base_url=edge.server.base_url) as c:
        r = await c.post("/v1/calls", json={"agent_id": edge.agent_id, "to": "+1415555012",
                                            "from": "+14155550100"})
    assert r.status_code == 401


async def test_outbound_not_answered(edge: Edge, admin_headers):
    r = await _post_call(edge, admin_headers)
    sid, request_uuid = r.json()["session_id"], r.json()["request_uuid"]
    # Plivo's hangup callback for a call nobody picked up
    resp = await edge.sim.request(
        "POST", edge.server.base_url + f"/plivo/hangup?session_id={sid}",
        {"RequestUUID": request_uuid, "CallStatus": "no-answer", "HangupCause": "NO_ANSWER",
         "Direction": "outbound"})
    assert resp.status_code == 200
    row = await ended_session(edge, session_id=sid)
    assert (row.status, row.end_reason, row.hangup_cause) == ("failed", "no_answer",
                                                              "NO_ANSWER")
    assert not edge.server.state.extras["app.telephony.plivo"].admission.holds(sid)


async def test_outbound_needs_rest_credentials(edge_factory, admin_headers):
    async with edge_factory(plivo={"auth_id": ""}) as edge:
        r = await _post_call(edge, admin_headers)
        assert r.status_code == 503
