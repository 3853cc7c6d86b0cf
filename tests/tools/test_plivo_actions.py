"""end_call and transfer_call against a local fake of Plivo's REST API, with the real REST
client, state store, event sinks and transfer XML endpoint — the pieces a call host wires up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from lxml import etree

from app.agent_config import ToolConfig
from app.calls.state_store import SessionStateStore
from app.calls.transfer import TRANSFER_KEY
from app.config import Settings
from app.db.models import Session
from app.events.service import EventsService
from app.telephony.plivo.rest import PlivoRestClient
from app.telephony.plivo.transfers import PlivoTransfers, transfer_url
from app.tools.control import TransferPlan
from app.tools.executor import ToolExecutor, ToolSession
from pipelines import events as ev
from providers.base import ToolCall
from tests.events.conftest import make_session
from tests.fakes.plivo_rest import FakePlivoRest, run_fake_plivo_rest
from tests.tools.conftest import RecordingControl

PUBLIC_URL = "http://testserver"


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(security={"verify_plivo_signatures": False},
                            server={"public_url": PUBLIC_URL})


class PlivoControl(RecordingControl):
    """CallControl the way a host implements it on Plivo: REST hangup/transfer + events."""

    def __init__(self, sid: str, call_uuid: str, rest: PlivoRestClient,
                 store: SessionStateStore, events: EventsService) -> None:
        super().__init__(sid, call_uuid)
        self.rest, self.store, self.events = rest, store, events

    async def hangup(self, reason: str) -> None:
        await self.rest.hangup(self.call_uuid)
        self.events.publish(ev.SessionEnded(session_id=self.session_id, reason=reason))
        self._ended = True

    async def transfer(self, plan: TransferPlan) -> None:
        transfers = PlivoTransfers(rest=self.rest, store=self.store, public_url=PUBLIC_URL,
                                   session_id=self.session_id, call_uuid=self.call_uuid,
                                   caller_id="+14155550199")
        await transfers.hand_off(plan)
        self.events.publish(ev.CallTransferred(session_id=self.session_id,
                                               target=", ".join(plan.targets), mode=plan.mode))
        self.events.publish(ev.SessionEnded(session_id=self.session_id, reason="transferred"))
        self._ended = True


async def _setup(app: FastAPI, fake: FakePlivoRest, tools: list[ToolConfig]) -> Any:
    state = app.state.pb
    sid, _ = await make_session(state.db, status="active")
    call_uuid = "3b8a6a4e-0000-4000-8000-000000000001"
    fake.live_calls.add(call_uuid)
    rest = PlivoRestClient(fake.api_base, fake.auth_id, fake.auth_token, backoff_s=0.01)
    store = SessionStateStore(state.db.sessionmaker)
    control = PlivoControl(sid, call_uuid, rest, store, state.events)
    executor = ToolExecutor(tools, ToolSession(session_id=sid, call_uuid=call_uuid,
                                               control=control),
                            state.events.publish)
    return sid, call_uuid, rest, executor


async def test_end_call_hangs_up_through_plivo_rest(app: FastAPI) -> None:
    async with run_fake_plivo_rest() as fake:
        sid, call_uuid, rest, executor = await _setup(
            app, fake, [ToolConfig(name="end_call", builtin="end_call")])
        fake.fail_next(503)  # Plivo hiccups once; the client retries
        result = await executor(ToolCall(id="c", name="end_call", arguments={}))
        await rest.aclose()
    assert result == {"status": "ending call"}
    deletes = fake.calls_to("DELETE", f"/Call/{call_uuid}/")
    assert [r.status for r in deletes] == [503, 204]
    assert call_uuid not in fake.live_calls
    await app.state.pb.events.flush()
    async with app.state.pb.db.session() as s:
        row = await s.get(Session, sid)
        assert row is not None and row.status == "ended" and row.end_reason == "agent_ended"


async def test_transfer_call_posts_plivo_transfer_and_serves_dial_xml(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    tool = ToolConfig(name="transfer_call", builtin="transfer_call",
                      options={"targets": {"sales": ["+14155550100", "sip:desk@pbx.example"]}})
    async with run_fake_plivo_rest() as fake:
        sid, call_uuid, rest, executor = await _setup(app, fake, [tool])
        sub = app.state.pb.events.bus.subscribe(sid)
        result = await executor(ToolCall(id="c", name="transfer_call", arguments={
            "target": "sales"}))
        await rest.aclose()
    assert result["status"] == "transferring"
    seen = []
    while (env := sub.get_nowait()) is not None:
        seen.append((env.type, env.event.payload()))
    assert [t for t, _ in seen] == ["tool.called", "tool.completed", "call.transferred",
                                    "session.ended", "tool.executed"]
    assert seen[2][1]["target"] == "+14155550100, sip:desk@pbx.example"
    (post,) = fake.calls_to("POST", f"/Call/{call_uuid}/")
    assert post.status == 202
    assert post.body == {"legs": "aleg", "aleg_url": transfer_url(PUBLIC_URL, sid),
                         "aleg_method": "POST"}

    state = app.state.pb
    await state.events.flush()
    async with state.db.session() as s:
        row = await s.get(Session, sid)
        assert row is not None and row.end_reason == "transferred"
        assert row.state[TRANSFER_KEY]["targets"] == ["+14155550100", "sip:desk@pbx.example"]
    # Hidden from the public state API.
    r = await client.get(f"/v1/sessions/{sid}/state", headers=admin_headers)
    assert r.status_code == 200 and TRANSFER_KEY not in r.json()

    # What Plivo fetches next: <Dial> the first target, its action URL trying the next one.
    r = await client.post(f"/plivo/transfer/{sid}")
    assert r.status_code == 200
    dial = etree.fromstring(r.content).find("Dial")
    assert [(e.tag, e.text) for e in dial] == [("Number", "14155550100")]
    assert dial.get("timeout") == "30"
    assert dial.get("action") == f"{PUBLIC_URL}/plivo/transfer/{sid}/next?i=1"
    # Busy: the next target is rung.
    r = await client.post(dial.get("action"), data={"DialStatus": "busy"})
    dial = etree.fromstring(r.content).find("Dial")
    assert [(e.tag, e.text) for e in dial] == [("User", "sip:desk@pbx.example")]
    # The last one not answering either: the caller is told, not left in silence.
    r = await client.post(dial.get("action"), data={"DialStatus": "no-answer"})
    assert "nobody could take your call" in etree.fromstring(r.content).findtext("Speak")
    # A dial that connected ends the call when the two hang up.
    r = await client.post(f"/plivo/transfer/{sid}/next?i=1", data={"DialStatus": "completed"})
    assert etree.fromstring(r.content).find("Hangup") is not None


async def test_parallel_cold_transfer_dials_every_target_at_once(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    tool = ToolConfig(name="transfer_call", builtin="transfer_call",
                      options={"targets": {"desk": ["+14155550100", "+14155550101"]},
                               "dial_mode": "parallel", "ring_timeout_s": 20})
    async with run_fake_plivo_rest() as fake:
        sid, _, rest, executor = await _setup(app, fake, [tool])
        await executor(ToolCall(id="c", name="transfer_call", arguments={"target": "desk"}))
        await rest.aclose()
    r = await client.post(f"/plivo/transfer/{sid}")
    dial = etree.fromstring(r.content).find("Dial")
    assert [e.text for e in dial] == ["14155550100", "14155550101"]
    assert dial.get("timeout") == "20"
    r = await client.post(dial.get("action"), data={"DialStatus": "no-answer"})
    assert "nobody could take your call" in etree.fromstring(r.content).findtext("Speak")
