"""Call control from a runner: transfer (REST + our <Dial> XML), hangup, Plivo's `stop`."""

from __future__ import annotations

from lxml import etree

from app.tools.control import TransferPlan
from tests.telephony.conftest import AGENT_NUMBER, Edge, ended_session
from tests.telephony.scripted import ScriptRunner


async def _row(edge: Edge, call_uuid: str):
    return await ended_session(edge, call_uuid=call_uuid)


async def test_transfer_fetches_dial_xml_then_stream_ends(edge: Edge):
    async def script(info, transport, out):
        await transport.transfer(TransferPlan.to("+1 415 555 0123"))
        return "transferred"

    edge.server.state.calls = ScriptRunner(script)
    fetched = {}

    async def on_transfer(call_uuid, body):
        # Plivo fetches the new XML for the caller's leg, signed like any callback
        resp = await edge.sim.request("POST", body["aleg_url"],
                                      {"CallUUID": call_uuid, "Event": "Transfer"})
        fetched["status"], fetched["xml"] = resp.status_code, resp.text

    edge.rest.on_transfer = on_transfer
    call = edge.wire(edge.sim.call(to=AGENT_NUMBER))
    async with call:
        await call.wait_closed(within_s=10)
        await call.wait_for(lambda: "xml" in fetched, within_s=5)
    assert call.result.closed_by == "server" and call.result.close_code == 1000
    body = edge.rest.calls_to("POST", f"/Call/{call.call_uuid}/")[0].body
    assert body["legs"] == "aleg" and "/plivo/transfer/" in body["aleg_url"]
    assert fetched["status"] == 200
    dial = etree.fromstring(fetched["xml"].encode()).find("Dial")
    assert dial.find("Number").text == "14155550123"
    row = await _row(edge, call.call_uuid)
    assert row.end_reason == "transferred"


async def test_consult_urls_without_a_warm_transfer_release_the_leg(edge: Edge):
    """A consult leg Plivo reports for a call that has no warm transfer (over, or never
    asked for) is told goodbye and hung up; its hangup report is just acknowledged."""
    base = edge.server.base_url + "/plivo/consult/nosuch"
    for step in ("answer", "join"):
        r = await edge.sim.request("POST", f"{base}/{step}", {"CallUUID": "leg-1"})
        root = etree.fromstring(r.text.encode())
        assert root.find("Hangup") is not None and root.find("Conference") is None
    r = await edge.sim.request("POST", f"{base}/hangup", {"CallUUID": "leg-1",
                                                          "CallStatus": "completed"})
    assert r.status_code == 200
    r = await edge.sim.request("POST", f"{base}/answer", {"CallUUID": "leg-1"}, sign=False)
    assert r.status_code == 403


async def test_transfer_xml_without_pending_transfer_apologises(edge: Edge):
    r = await edge.sim.request("POST", edge.server.base_url + "/plivo/transfer/nosuch",
                               {"CallUUID": "x"})
    assert r.status_code == 200
    root = etree.fromstring(r.text.encode())
    assert root.find("Speak") is not None and root.find("Hangup") is not None


async def test_plivo_stop_event_ends_the_stream(edge: Edge):
    call = edge.wire(edge.sim.call(to=AGENT_NUMBER))
    async with call:
        await call.send_json({"event": "stop", "streamId": call.stream_id})
        await call.wait_closed(within_s=10)
    assert call.result.closed_by == "server"
    row = await _row(edge, call.call_uuid)
    assert (row.status, row.end_reason) == ("ended", "stream_stopped")


async def test_runner_crash_hangs_up_and_marks_failed(edge: Edge):
    async def script(info, transport, out):
        raise RuntimeError("boom")

    edge.server.state.calls = ScriptRunner(script)
    call = edge.wire(edge.sim.call(to=AGENT_NUMBER))
    async with call:
        await call.wait_closed(within_s=10)
    assert edge.rest.calls_to("DELETE", f"/Call/{call.call_uuid}/")
    row = await _row(edge, call.call_uuid)
    assert (row.status, row.end_reason) == ("failed", "runner_error")
