"""Collect tools on live calls: the agent's LLM (fake OpenAI) calls collect_email or
collect_credit_card; the tool takes over the conversation, the caller (Piper speech through the
Plivo simulator, transcribed by the fake Deepgram) answers and confirms, and the LLM gets the
value. A card number must not appear in clear anywhere: events, stored rows, report, LLM
requests, logs."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest

from app.config import Settings
from tests.e2e.test_tools_call import chat_messages, greet_and_ask, tool_results
from tests.e2e.tools_fixtures import CallStack, Recorder, call_stack, of_type
from tests.fakes.fake_openai import ChatReply, FakeToolCall

pytestmark = pytest.mark.slow


async def answer(stack: CallStack, call: Any, rec: Recorder, question: str,
                 text: str) -> None:
    """Once the agent finished asking `question`, the caller says `text`."""
    # Spoken sentence by sentence: each is its own speech.
    def asked(es: list[Any]) -> bool:
        return question in " ".join(e.event.text for e in es
                                    if e.type == "agent.speech_completed")
    await rec.wait_for(asked, within_s=20)
    await stack.say(call, text, trail_ms=300)


async def test_collect_email_is_confirmed_and_returned(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack:
        await stack.add_agent(tools=[{"name": "collect_email", "builtin": "collect_email"}])
        rec = Recorder(stack)
        stack.deepgram.queue_transcript("I want to update my email.",
                                        "john dot smith at example dot com", "yes")
        stack.openai.queue_chat(
            ChatReply(tool_calls=[FakeToolCall("collect_email", {}, "ce1")]),
            "Thanks, your email is updated.")
        async with stack.call() as call:
            sid = await greet_and_ask(stack, call, rec, "I want to update my email.")
            await answer(stack, call, rec, "What is your e-mail address?",
                         "john dot smith at example dot com")
            await answer(stack, call, rec,
                         "I have john.smith@example.com. Is that right?", "yes")
            await rec.wait_type("turn.completed", sid=sid, within_s=30)

        envs = rec.session(sid)
        (done,) = of_type(envs, "tool.completed")
        assert done.event.result == {"email": "john.smith@example.com"}
        assert [(e.type, e.event.agent_tool_type) for e in of_type(
            envs, "agent_tool.started", "agent_tool.completed")] == [
            ("agent_tool.started", "collect_email"), ("agent_tool.completed", "collect_email")]
        # The answers were the tool's input: no barge-in, no turn of their own.
        assert not of_type(envs, "agent.speech_interrupted", "tool.failed")
        assert [e.event.text for e in of_type(envs, "user.turn_completed")] == [
            "I want to update my email."]
        assert tool_results(chat_messages(stack, 1)) == [{"email": "john.smith@example.com"}]
        (turn,) = of_type(envs, "turn.completed")
        assert turn.event.agent_text.endswith("Thanks, your email is updated.")
        await stack.settled()
        session = await stack.get(f"/v1/sessions/{sid}")
        assert [(t["name"], t["status"], t["result"]) for t in session["tool_calls"]] == [
            ("collect_email", "ok", {"email": "john.smith@example.com"})]


CARD = "4242 4242 4242 4242"
CLEAR = ("4242424242424242", "4242 4242 4242 4242", "4242-4242", "four two four two")


async def test_collect_credit_card_never_shows_the_number(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with call_stack(settings_factory, monkeypatch) as stack:
        await stack.add_agent(tools=[{"name": "take_payment", "builtin": "collect_credit_card"}])
        rec = Recorder(stack)
        stack.deepgram.queue_transcript("I would like to pay my bill.", CARD,
                                        "twelve twenty nine", "one two three", "yes")
        stack.openai.queue_chat(
            ChatReply(tool_calls=[FakeToolCall("take_payment", {}, "cc1")]),
            "Thank you, your payment is on its way.")
        async with stack.call() as call:
            sid = await greet_and_ask(stack, call, rec, "I would like to pay my bill.")
            await answer(stack, call, rec,
                         "Please say or key in your card number, then press pound.",
                         "four two four two, four two four two, four two four two, "
                         "four two four two")
            await answer(stack, call, rec, "What is the expiry date, month and year?",
                         "twelve twenty nine")
            await answer(stack, call, rec, "And the security code on the back of the card?",
                         "one two three")
            await answer(stack, call, rec, "I have a Visa card ending in 4 2 4 2, expiring "
                         "December 2029. Is that right?", "yes")
            await rec.wait_type("turn.completed", sid=sid, within_s=30)
        (ended,) = await rec.wait_type("session.ended", sid=sid)

        envs = rec.session(sid)
        expected = {"card_number": "**** **** **** 4242", "last4": "4242", "brand": "visa",
                    "expiry": "12/29", "cvv_provided": True}
        (done,) = of_type(envs, "tool.completed")
        assert done.event.result == expected
        (completed,) = of_type(envs, "agent_tool.completed")
        assert completed.event.agent_tool_type == "collect_credit_card"
        assert completed.event.result == expected
        assert tool_results(chat_messages(stack, 1)) == [expected]
        # The caller's answers are in the events, masked.
        finals = [e.event.text for e in of_type(envs, "user.transcription") if e.event.is_final]
        assert "**** **** **** ****" in finals and "* * *" in finals
        await stack.settled()
        session = await stack.get(f"/v1/sessions/{sid}")
        assert session["tool_calls"][0]["result"] == expected

        everywhere = {
            "events": json.dumps([e.event.to_dict() for e in envs]),
            "session": json.dumps(session),
            "report": json.dumps(ended.event.report),
            "llm": json.dumps([r.json for r in stack.openai.for_endpoint("chat")]),
            "logs": caplog.text,
        }
        for where, text in everywhere.items():
            for clear in (*CLEAR, "123\""):
                assert clear not in text, (where, clear)
