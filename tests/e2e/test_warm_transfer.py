"""Warm transfers through the Plivo path: the caller on hold with the agent while targets are
rung on consult legs and briefed, then bridged in a conference, or back with the agent when
nobody takes the call. Plivo's REST API and the people it rings are protocol-level fakes
(tests.fakes.plivo_rest, tests.fakes.plivo_consult); the server, call host, engine and models
are real."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from lxml import etree

from app.config import Settings
from tests.e2e.test_tools_call import greet_and_ask
from tests.e2e.tools_fixtures import (
    CallStack,
    Recorder,
    call_stack,
    loudness,
    of_type,
)
from tests.fakes.fake_openai import ChatReply, FakeToolCall
from tests.fakes.plivo_consult import ConsultPhones

FIRST, SECOND = "+14155550131", "+14155550132"
BRIEF = "Ada wants to move her appointment to Friday."


def phases(envs: list[Any]) -> list[tuple[str, str]]:
    return [(e.event.phase, e.event.target) for e in of_type(envs, "call.transferred")]


def warm_tool(**options: Any) -> dict[str, Any]:
    return {"name": "transfer_call", "builtin": "transfer_call", "options": {
        "targets": {"front desk": [FIRST, SECOND]}, "mode": "warm",
        "message": "Please hold while I find someone.", **options}}


def _phones(stack: CallStack, people: dict[str, str], ring_s: float = 0.3) -> ConsultPhones:
    """The people the consult legs ring, by number: answer | busy | no-answer | leave |
    ringing (tests.fakes.plivo_consult)."""
    phones = ConsultPhones(stack.sim, {n.lstrip("+"): who for n, who in people.items()},
                           ring_s=ring_s)
    phones.hook(stack.rest)
    return phones


async def _greeted(stack: CallStack, call: Any, rec: Recorder) -> str:
    sid = await stack.session_id(call)
    await rec.wait_type("agent.speech_completed", sid=sid)
    return sid


async def _transfer_over_rest(stack: CallStack, sid: str, **body: Any) -> None:
    r = await stack.post(f"/v1/sessions/{sid}/transfer", {"mode": "warm", **body})
    assert r.status_code == 202, r.text


async def _ask_for_a_person(stack: CallStack, call: Any, rec: Recorder) -> str:
    stack.deepgram.queue_transcript("Can I talk to a person?")
    stack.openai.queue_chat(ChatReply(tool_calls=[FakeToolCall(
        "transfer_call", {"target": "front desk", "summary": BRIEF}, "call_xfer")]))
    return await greet_and_ask(stack, call, rec, "Can I talk to a person?")


async def test_sequential_warm_transfer_briefs_the_second_target_and_bridges_the_caller(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack:
        await stack.add_agent(tools=[warm_tool()])
        phones = _phones(stack, {FIRST: "busy", SECOND: "answer"}, ring_s=1.5)
        rec = Recorder(stack)
        async with stack.call() as call:
            sid = await _ask_for_a_person(stack, call, rec)
            await rec.wait_for(lambda envs: ("holding", f"{FIRST}, {SECOND}") in phases(
                [e for e in envs if e.session_id == sid]), within_s=30)
            held_from = len(call.far.recording())
            await call.wait_closed(within_s=30)
            heard = call.far.recording()[held_from:]
            await call.wait_for(lambda: call.call_uuid in stack.transfer_docs, within_s=10)
        (ended,) = await rec.wait_type("session.ended", sid=sid)
        assert ended.event.reason == "transferred"

        # The target heard the brief and waits in the conference the caller was moved to.
        second = phones.by_number(SECOND)
        assert second.heard == [BRIEF]
        caller_doc = etree.fromstring(stack.transfer_docs[call.call_uuid].encode())
        assert caller_doc.find("Conference").text == second.conference == f"pb-{sid}"
        assert caller_doc.find("Conference").get("endConferenceOnExit") == "true"
        first = phones.by_number(FIRST)
        assert first.hung_up == "busy" and first.conference is None
        # Consult legs show our number, ring for the configured time and report back to us.
        assert second.request["from"] == "14155550199"
        assert second.request["ring_timeout"] == 30
        assert second.request["answer_url"].endswith(f"/plivo/consult/{sid}/answer")
        # The caller heard hold music, not silence, while the targets were rung.
        assert len(heard) > 8000 and loudness(heard) > 200

        envs = rec.session(sid)
        assert phases(envs) == [
            ("holding", f"{FIRST}, {SECOND}"), ("dialing", FIRST), ("no_answer", FIRST),
            ("dialing", SECOND), ("answered", SECOND), ("bridged", SECOND)]
        assert of_type(envs, "call.transferred")[2].event.reason == "busy"
        (added,) = of_type(envs, "participant.added")
        assert (added.event.participant, added.event.leg_id) == (SECOND, second.leg_id)
        (agent_left,) = of_type(envs, "participant.removed")
        assert agent_left.event.role == "agent"

        # The person hangs up later: the transfer's last event, after the session ended.
        await phones.hang_up(second)
        left = await rec.wait_type("participant.removed", sid=sid, n=2)
        assert (left[1].event.participant, left[1].event.role) == (SECOND, "transfer_target")
        await stack.settled()
        session = await stack.get(f"/v1/sessions/{sid}")
        assert session["end_reason"] == "transferred"
        assert [(t["name"], t["status"]) for t in session["tool_calls"]] == [
            ("transfer_call", "ok")]


async def test_nobody_answers_brings_the_caller_back_to_the_agent(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack:
        await stack.add_agent(tools=[warm_tool(dial_mode="parallel")])
        phones = _phones(stack, {FIRST: "no-answer", SECOND: "leave"})
        rec = Recorder(stack)
        async with stack.call() as call:
            sid = await _ask_for_a_person(stack, call, rec)
            stack.openai.queue_chat("I'm sorry, nobody is free right now. Can I take a message?")
            await rec.wait_for(lambda envs: any(
                e.session_id == sid and e.type == "call.transferred"
                and e.event.phase == "failed" for e in envs), within_s=30)
            spoken = await rec.wait_type("agent.speech_completed", sid=sid, n=3, within_s=30)
            assert spoken[-1].event.text.startswith("I'm sorry, nobody is free")
            assert not call.closed  # the call goes on with the agent
            await call.hangup()
        await rec.wait_type("session.ended", sid=sid)

        envs = rec.session(sid)
        got = phases(envs)
        assert got[0] == ("holding", f"{FIRST}, {SECOND}") and got[-1][0] == "failed"
        assert {p for p in got[1:3]} == {("dialing", FIRST), ("dialing", SECOND)}
        assert sorted(got[3:-1]) == [("answered", SECOND), ("no_answer", FIRST),
                                     ("no_answer", SECOND)]
        assert [e.event.participant for e in of_type(envs, "participant.added")] == [SECOND]
        assert [e.event.participant for e in of_type(envs, "participant.removed")] == [SECOND]
        assert phones.by_number(SECOND).heard == [BRIEF]
        # The LLM was told, and told the caller.
        tool_msgs = [m for m in stack.openai.for_endpoint("chat")[-1].json["messages"]
                     if m["role"] == "tool"]
        assert "no_answer" in tool_msgs[-1]["content"]
        await stack.settled()
        session = await stack.get(f"/v1/sessions/{sid}")
        assert session["end_reason"] != "transferred"
        assert [(t["name"], t["status"]) for t in session["tool_calls"]] == [
            ("transfer_call", "error")]


async def test_parallel_warm_transfer_over_rest_takes_the_first_to_answer(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack:
        await stack.add_agent()
        phones = _phones(stack, {FIRST: "ringing", SECOND: "answer"}, ring_s=0.5)
        rec = Recorder(stack)
        async with stack.call() as call:
            sid = await _greeted(stack, call, rec)
            bad = await stack.post(f"/v1/sessions/{sid}/transfer", {
                "targets": [FIRST, "premium please"], "mode": "warm"})
            assert bad.status_code == 422 and "targets" in bad.text
            await _transfer_over_rest(stack, sid, targets=[FIRST, SECOND], dial_mode="parallel",
                                      brief=BRIEF, ring_timeout_s=20)
            again = await stack.post(f"/v1/sessions/{sid}/transfer", {
                "target": FIRST, "mode": "warm"})
            assert again.status_code == 409 and "under way" in again.text
            await call.wait_closed(within_s=30)
        await rec.wait_type("session.ended", sid=sid)
        envs = rec.session(sid)
        assert phases(envs)[-1] == ("bridged", SECOND)
        # The one still ringing was cancelled once the other picked up.
        first = phones.by_number(FIRST)
        assert first.hung_up == "cancel"
        assert stack.rest.calls_to("DELETE", f"/Request/{first.leg_id}/")
        assert phones.by_number(SECOND).conference == f"pb-{sid}"


async def test_rest_warm_transfer_nobody_takes_says_the_failure_message(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack:
        await stack.add_agent()
        _phones(stack, {FIRST: "busy"}, ring_s=0.5)
        rec = Recorder(stack)
        async with stack.call() as call:
            sid = await _greeted(stack, call, rec)
            await _transfer_over_rest(stack, sid, target=FIRST, brief=BRIEF)
            # Not silence: the agent tells the caller, who is still on the line with it.
            said = await rec.wait_type("agent.speech_created", sid=sid, n=2, within_s=30)
            assert (said[-1].event.source, said[-1].event.text) == (
                "say", "I'm sorry, I couldn't reach anyone right now. I'm still here to help.")
            await rec.wait_type("agent.speech_completed", sid=sid, n=3, within_s=30)
            assert not call.closed
            await call.hangup()
        await rec.wait_type("session.ended", sid=sid)
        assert [p for p, _ in phases(rec.session(sid))] == [
            "holding", "dialing", "no_answer", "failed"]


async def test_caller_hanging_up_on_hold_stops_the_ringing(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack:
        await stack.add_agent()
        phones = _phones(stack, {FIRST: "ringing"}, ring_s=0.2)
        rec = Recorder(stack)
        async with stack.call() as call:
            sid = await _greeted(stack, call, rec)
            await _transfer_over_rest(stack, sid, target=FIRST, ring_timeout_s=120)
            await rec.wait_for(lambda envs: ("dialing", FIRST) in phases(
                [e for e in envs if e.session_id == sid]), within_s=30)
            await call.hangup()
        await rec.wait_type("session.ended", sid=sid)
        # The target's phone stops ringing with the caller gone, not two minutes later.
        leg = phones.by_number(FIRST)
        await rec.wait_for(lambda envs: leg.hung_up is not None, within_s=10)
        assert leg.hung_up == "cancel"
        assert stack.rest.calls_to("DELETE", f"/Request/{leg.leg_id}/")
        assert phases(rec.session(sid))[-1] == ("no_answer", FIRST)
