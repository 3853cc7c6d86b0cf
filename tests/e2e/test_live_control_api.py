"""Reconfiguring a live call over REST: PATCH /v1/sessions/{id}, play, background.

A real call (the Plivo simulator as caller, the real engine, fake OpenAI / Deepgram /
ElevenLabs) is reconfigured through the control API while it runs.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.config import Settings
from tests.e2e.test_customer_app import tone_wav
from tests.e2e.tools_fixtures import ADMIN, CallStack, Recorder, call_stack, of_type

pytestmark = pytest.mark.slow

REFUND = {"name": "refund", "description": "Refund an order",
          "webhook": {"url": "http://127.0.0.1:9/refund"},
          "parameters": {"type": "object", "properties": {}}}


async def send(stack: CallStack, method: str, path: str, body: Any = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.server.base_url, headers=ADMIN) as c:
        return await c.request(method, path, json=body)


def field_of(r: httpx.Response) -> str:
    assert r.status_code == 422, r.text
    return str(r.json()["errors"][0]["field"])


async def test_patch_play_and_background_on_a_live_call(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack:
        await stack.add_agent()
        rec = Recorder(stack)
        stack.deepgram.queue_transcript("I want a refund.")
        stack.openai.queue_chat("Billing here, let me look.")
        async with stack.call() as call:
            sid = await stack.session_id(call)
            await rec.wait_type("agent.speech_completed", sid=sid)  # the greeting

            # Refused whole, naming the field; nothing changes.
            assert field_of(await send(stack, "PATCH", f"/v1/sessions/{sid}",
                                       {"tools": [{"name": "x y"}]})).startswith("tools.0")
            assert field_of(await send(stack, "PATCH", f"/v1/sessions/{sid}", {})) == "body"
            llm = {"provider": "openai", "api_key": {"env": "PB_E2E_VENDOR_KEY"},
                   "base_url": stack.openai.base_url, "model": "gpt-4.1-mini"}
            r = await send(stack, "PATCH", f"/v1/sessions/{sid}",
                           {"prompt": "You are the billing agent.", "tools": [REFUND],
                            "llm": llm, "new_agent": "billing"})
            assert r.status_code == 202, r.text
            assert sorted(r.json()["fields"]) == ["llm", "prompt", "tools"]

            wav = base64.b64encode(tone_wav()).decode()
            assert field_of(await send(stack, "POST", f"/v1/sessions/{sid}/play",
                                       {"audio_data": "%%%"})) == "audio_data"
            assert field_of(await send(stack, "POST", f"/v1/sessions/{sid}/play",
                                       {"audio_data": base64.b64encode(b"nope").decode()})
                            ) == "audio_data"
            r = await send(stack, "POST", f"/v1/sessions/{sid}/play", {"audio_data": wav})
            assert r.status_code == 202, r.text
            play_id = r.json()["play_id"]
            (done,) = await rec.wait_type("play.completed", sid=sid, within_s=20)
            assert done.event.play_id == play_id and not done.event.interrupted

            assert field_of(await send(stack, "PUT", f"/v1/sessions/{sid}/background",
                                       {"sound": "disco"})) == "sound"
            # Turn-taking settings: merged, validated whole, applied from the next utterance.
            for bad, field in (({"vad": {"threshold": 5}}, "turn_taking.vad.threshold"),
                               ({"vad": {"engine": "webrtc"}}, "turn_taking.vad.engine"),
                               ({"greeting": "hi"}, "turn_taking.greeting"),
                               ({"semantic_vad": "hyper"}, "turn_taking.semantic_vad")):
                assert field_of(await send(stack, "PATCH", f"/v1/sessions/{sid}",
                                           {"turn_taking": bad})) == field, bad
            r = await send(stack, "PATCH", f"/v1/sessions/{sid}", {"turn_taking": {
                "turn": {"max_wait_ms": 900}, "interruption": {"min_words": 2}}})
            assert (r.status_code, r.json()["fields"]) == (202, ["turn_taking"]), r.text
            live = stack.server.state.calls.live.get(sid)
            assert live.config.turn.max_wait_ms == 900
            assert live.config.interruption.min_words == 2
            assert live.config.idle.timeout_s == 30  # untouched settings stay

            r = await send(stack, "PUT", f"/v1/sessions/{sid}/background",
                           {"sound": "hold_music", "volume": 0.2})
            assert r.status_code == 202, r.text
            assert (await send(stack, "DELETE", f"/v1/sessions/{sid}/background")
                    ).status_code == 202

            await stack.say(call, "I want a refund.", trail_ms=200)
            await rec.wait_type("turn.completed", sid=sid, within_s=30)
        await rec.wait_type("session.ended", sid=sid)
        await stack.settled()
        # Over: a conflict.
        r = await send(stack, "PATCH", f"/v1/sessions/{sid}", {"prompt": "late"})
        assert r.status_code == 409, r.text

    envs = rec.session(sid)
    updated, retuned = of_type(envs, "session.updated")
    assert updated.event.fields != ["turn_taking"] and retuned.event.fields == ["turn_taking"]
    (handoff,) = of_type(envs, "agent.handoff")
    assert handoff.event.new_agent == "billing" and updated.seq < handoff.seq
    # The next answer used the new persona, model and tools.
    request = stack.openai.for_endpoint("chat")[0].json
    assert request["model"] == "gpt-4.1-mini"
    assert request["messages"][0]["content"] == "You are the billing agent."
    assert [t["function"]["name"] for t in request["tools"]] == ["refund"]


async def test_handoff_to_another_agent_over_rest_and_as_a_tool(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fakes.fake_openai import ChatReply, FakeToolCall

    async with call_stack(settings_factory, monkeypatch) as stack:
        billing = await stack.add_agent(number=None, name="Billing",
                                        prompt="You are the billing agent.", tools=[REFUND],
                                        voice="billing-voice")
        support = await stack.add_agent(number=None, name="Support",
                                        prompt="You are the support agent.")
        handoff_tool = {"name": "handoff", "builtin": "handoff",
                        "options": {"agents": {"support": support},
                                    "message": "Let me get a colleague."}}
        front = await stack.add_agent(tools=[handoff_tool])
        rec = Recorder(stack)
        stack.deepgram.queue_transcript("I have a billing question.", "My app is broken.",
                                        "Hello?")
        stack.openai.queue_chat(
            "Billing here.",
            ChatReply(tool_calls=[FakeToolCall("handoff", {"agent": "support",
                                                           "summary": "App is broken."},
                                               "h1")]),
            "Passing you on.", "Support here.")
        async with stack.call() as call:
            sid = await stack.session_id(call)
            await rec.wait_type("agent.speech_completed", sid=sid)  # the greeting
            assert field_of(await send(stack, "POST", f"/v1/sessions/{sid}/handoff",
                                       {"agent_id": "no-such-agent"})) == "agent_id"
            # 1. Over REST to billing: its prompt, tools and voice from the next answer.
            r = await send(stack, "POST", f"/v1/sessions/{sid}/handoff",
                           {"agent_id": billing, "summary": "Caller asks about a bill."})
            assert r.status_code == 202, r.text
            assert {"prompt", "tools", "voice"} <= set(r.json()["fields"])
            await stack.say(call, "I have a billing question.", trail_ms=200)
            await rec.wait_type("turn.completed", sid=sid, within_s=30)
            # 2. Back to the front agent, whose LLM hands over to support with its builtin.
            r = await send(stack, "POST", f"/v1/sessions/{sid}/handoff", {"agent_id": front})
            assert r.status_code == 202, r.text
            await stack.say(call, "My app is broken.", trail_ms=200)
            await rec.wait_type("turn.completed", sid=sid, n=2, within_s=30)
            # 3. The next answer is support's.
            await stack.say(call, "Hello?", trail_ms=200)
            await rec.wait_type("turn.completed", sid=sid, n=3, within_s=30)
        (ended,) = await rec.wait_type("session.ended", sid=sid)

    chats = [c.json for c in stack.openai.for_endpoint("chat")]
    assert chats[0]["messages"][0]["content"] == "You are the billing agent."
    assert any(m["content"] == "Caller asks about a bill." for m in chats[0]["messages"])
    assert [t["function"]["name"] for t in chats[0]["tools"]] == ["refund"]
    assert chats[1]["messages"][0]["content"].startswith("You are a helpful phone agent")
    assert chats[3]["messages"][0]["content"] == "You are the support agent."
    assert any(m["content"] == "App is broken." for m in chats[3]["messages"])
    voices = [r.path for r in stack.eleven.for_endpoint("stream-input")]
    assert any("billing-voice" in p for p in voices)
    handoffs = [e.event for e in of_type(rec.session(sid), "agent.handoff")]
    assert [h.new_agent for h in handoffs] == [billing, front, support]
    assert all(h.agent_version == 1 for h in handoffs)
    assert [h["agent"] for h in ended.event.report["handoffs"]] == [billing, front, support]


async def test_agent_background_plays_from_the_start_of_the_call(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack:
        await stack.add_agent(greeting=None, background={"sound": "hum", "volume": 0.3})
        async with stack.call() as call:
            # Nobody speaks, yet the caller hears the agent's background.
            await call.wait_for(lambda: call.agent_spoke, within_s=10)
            await asyncio.sleep(0.5)
    assert call.result.play_frames > 10 and not call.result.play_errors
