"""Outbound voicemail detection on live calls: `POST /v1/calls` with `voicemail: {detect: true}`,
the simulated callee answers with a person's "Hello?" or a recorded greeting and a beep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from app.config import Settings
from tests.e2e.tools_fixtures import CallStack, Recorder, call_stack, of_type
from tests.speech import silence, synthesize

pytestmark = pytest.mark.slow

GREETING = "Hi, this is the test line."
MESSAGE = "Hi Sam, this is the clinic calling about your appointment. Please call us back."
MACHINE_GREETING = ("Hi, you have reached Sam. I am not available right now. "
                    "Please leave a message after the tone.")


def beep(ms: float = 500, hz: float = 1000.0) -> np.ndarray:
    t = np.arange(int(16 * ms)) / 16000
    return (9000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def spoken(envs: list[Any]) -> list[str]:
    return [e.event.text for e in of_type(envs, "agent.speech_started")]


async def session(stack: CallStack, sid: str) -> dict[str, Any]:
    await stack.settled()
    return await stack.get(f"/v1/sessions/{sid}")


async def test_a_person_answering_gets_the_greeting_after_their_hello(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack:
        agent_id = await stack.add_agent(number=None, greeting=GREETING)
        rec = Recorder(stack)
        stack.deepgram.queue_transcript("Hello?", "Who is this?")
        stack.openai.queue_chat("It's the test line calling about your order.")
        sid, call = await stack.dial_out(agent_id, voicemail={"detect": True})
        row = await session(stack, sid)
        assert row["metadata"] == {"_voicemail": {"detect": True}}
        await stack.say(call, "Hello?", lead_ms=400)
        hello_ended = time.monotonic()
        (verdict,) = await rec.wait_type("voicemail.detected", sid=sid)
        assert (verdict.event.result, verdict.event.method) == ("human", "silence")
        await rec.wait_for(lambda es: GREETING in spoken(es), within_s=10)
        await rec.wait_type("agent.speech_completed", sid=sid)
        await stack.say(call, "Who is this?", trail_ms=200)
        await rec.wait_type("turn.completed", sid=sid, within_s=30)
        await call.hangup()
        await rec.wait_type("session.ended", sid=sid)

        envs = rec.session(sid)
        greeting = next(e for e in of_type(envs, "agent.speech_started")
                        if e.event.text == GREETING)
        # Nobody talked over the callee: the greeting came after their "Hello?" and the verdict.
        assert greeting.seq > verdict.seq and greeting.event.mono >= hello_ended - 0.05
        assert spoken(envs) == [GREETING, "It's the test line calling about your order."]
        # "Hello?" was screened, not answered: the only turn is the question that followed.
        assert [e.event.text for e in of_type(envs, "user.turn_completed")] == ["Who is this?"]
        row = await session(stack, sid)
        assert row["voicemail"] == "human" and row["direction"] == "outbound"


async def test_a_machine_gets_the_message_after_the_beep_then_a_hangup(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack:
        agent_id = await stack.add_agent(
            number=None, greeting=GREETING,
            voicemail={"action": "leave_message", "message": MESSAGE})
        rec = Recorder(stack)
        stack.deepgram.queue_transcript(MACHINE_GREETING)
        sid, call = await stack.dial_out(agent_id, voicemail={"detect": True})
        greeting = synthesize(MACHINE_GREETING)
        pause = silence(400)
        audio = np.concatenate([silence(300), greeting, pause, beep(500), silence(3000)])
        call.say(audio, 16000)
        await call.wait_closed(within_s=40)
        # When the beep's last frame could first have reached the server: the sender may lag
        # behind its schedule on a busy machine and then catch up, but never runs ahead of it.
        (due,) = call.result.caller_audio_due
        # The frame that carries the beep's last 20 ms is due 20 ms before the beep ends.
        beep_last_frame = call.t0 + due + (300 + 400 + 500 - 20) / 1000 + len(greeting) / 16000
        (ended,) = await rec.wait_type("session.ended", sid=sid)

        envs = rec.session(sid)
        (verdict,) = of_type(envs, "voicemail.detected")
        assert verdict.event.result == "machine"
        assert verdict.event.method in ("transcript", "greeting_length")
        # Only the message was said, once the beep was over (the machine records from there).
        assert " ".join(spoken(envs)) == MESSAGE
        message = of_type(envs, "agent.speech_started")[0]
        assert message.event.mono >= beep_last_frame
        assert " ".join(e.event.text for e in of_type(envs, "agent.speech_completed")) == MESSAGE
        # No turn was taken with the recording, the LLM was never asked.
        assert not of_type(envs, "user.turn_completed", "agent.speech_interrupted")
        assert stack.openai.for_endpoint("chat") == []
        # Then the agent hung up through Plivo's REST API.
        assert call.result.closed_by == "api" and ended.event.reason == "voicemail"
        (delete,) = stack.rest.calls_to("DELETE", f"/Call/{call.call_uuid}/")
        assert delete.at >= of_type(envs, "agent.speech_completed")[-1].event.mono
        row = await session(stack, sid)
        assert (row["voicemail"], row["end_reason"], row["status"]) == (
            "machine", "voicemail", "ended")


async def test_a_beep_alone_is_a_machine_and_hangup_ends_the_call_at_once(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack:
        agent_id = await stack.add_agent(number=None, greeting=GREETING,
                                         voicemail={"action": "hangup"})
        rec = Recorder(stack)
        stack.deepgram.queue_transcript("Sam here")
        sid, call = await stack.dial_out(agent_id, voicemail={"detect": True})
        call.say(np.concatenate([silence(300), synthesize("Sam here"), silence(250),
                                 beep(400, hz=1400.0), silence(3000)]), 16000)
        await call.wait_closed(within_s=30)
        (ended,) = await rec.wait_type("session.ended", sid=sid)

        envs = rec.session(sid)
        (verdict,) = of_type(envs, "voicemail.detected")
        assert (verdict.event.result, verdict.event.method) == ("machine", "beep")
        assert spoken(envs) == [] and ended.event.reason == "voicemail"
        assert call.result.closed_by == "api"
        row = await session(stack, sid)
        assert (row["voicemail"], row["end_reason"]) == ("machine", "voicemail")
