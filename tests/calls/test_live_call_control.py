"""A running call reconfigured and given audio from outside (what the customer WebSocket's
`agent_session.update` / `play` / `send_dtmf` and `audio.mix` use): `Call.update`, `play`,
`play_background` / `stop_background`, `send_dtmf`, and their events.

Real parts: the server with its call host (Silero VAD, smart-turn), the Plivo simulator as the
caller, the event bus. Faked at the protocol level, being vendors: Plivo's REST API, the LLM
(fake OpenAI), STT (fake Deepgram) and TTS (fake ElevenLabs: a tone whose length follows the
text). The caller's turns are keypresses (a DTMF digit becomes a user turn), so no speech has to
be synthesised.
"""

from __future__ import annotations

import asyncio
import io
import wave
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from app.calls.call import Call
from app.config import Settings
from app.simulator.far_end import SimCall
from pipelines.audio.wav import wav_bytes
from tests.e2e.tools_fixtures import CallStack, Recorder, call_stack, of_type
from tests.telephony.audio_checks import tone

PLAY_HZ = 700.0


def live_call(stack: CallStack, sid: str) -> Call:
    call = stack.state.calls.live.get(sid)
    assert isinstance(call, Call)
    return call


def level(x: np.ndarray, freq: float, rate: int = 8000) -> float:
    if not len(x):
        return 0.0
    k = np.exp(-2j * np.pi * freq * np.arange(len(x)) / rate)
    return float(np.abs(x.astype(np.float64) @ k) * 2 / len(x))


def heard(call: SimCall) -> np.ndarray:
    """What the caller has heard so far (the simulator's model of Plivo's playout)."""
    assert call.far is not None
    return call.far.recording()


async def heard_over(call: SimCall, seconds: float) -> np.ndarray:
    """What the caller hears over the next `seconds`."""
    start = len(heard(call))
    await asyncio.sleep(seconds)
    return heard(call)[start:]


async def test_update_validates_then_applies_from_the_next_answer(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack:
        await stack.add_agent()
        rec = Recorder(stack)
        async with stack.call() as call:
            sid = await stack.session_id(call)
            await rec.wait_type("agent.speech_completed", sid=sid)  # the greeting was heard
            host_call = live_call(stack, sid)
            base = host_call.config.llm.model_dump(exclude={"fallback", "timeout_s"})

            bad: list[tuple[dict[str, Any], str]] = [
                ({"tools": [{"name": "has space", "builtin": "end_call"}]}, "tools.0.name"),
                ({"tools": [{"name": "x"}]}, "tools.0"),
                ({"tools": {"name": "x"}}, "tools"),
                ({"llm": {"provider": "no_such_llm"}}, "llm.provider"),
                ({"llm": {**base, "temperature": "hot"}}, "llm.temperature"),
                ({"llm": {**base, "fallback": [{**base, "max_tokens": "many"}]}},
                 "llm.fallback.0.max_tokens"),
            ]
            for fields, where in bad:
                with pytest.raises(ValueError) as err:
                    host_call.update(system_prompt="Never applied.", **fields)
                assert str(err.value).startswith(where), (fields, str(err.value))
            assert host_call.agent.executor is None  # a refused update changed nothing

            llm = {**base, "model": "gpt-4.1-mini"}
            changed = host_call.update(
                system_prompt="You are the refunds desk.",
                tools=[{"name": "end_call", "builtin": "end_call"}], llm=llm)
            assert changed == ["prompt", "tools", "llm"]
            assert host_call.agent.executor is not None
            assert [t.name for t in host_call.agent.executor.specs] == ["end_call"]

            await call.send_dtmf("1")  # a turn of its own after the DTMF gap
            await rec.wait_type("turn.completed", sid=sid, within_s=20)
            (request,) = stack.openai.for_endpoint("chat")
            body = request.json
            assert body["model"] == "gpt-4.1-mini"
            assert body["messages"][0] == {"role": "system",
                                           "content": "You are the refunds desk."}
            assert [t["function"]["name"] for t in body["tools"]] == ["end_call"]

            # [] removes every tool; the next answer is asked without any.
            assert host_call.update(tools=[]) == ["tools"]
            await call.send_dtmf("2")
            await rec.wait_type("turn.completed", sid=sid, n=2, within_s=20)
            second = stack.openai.for_endpoint("chat")[1].json
            assert not second.get("tools")

    envs = rec.session(sid)
    assert [e.event.fields for e in of_type(envs, "session.updated")] == [
        ["prompt", "tools", "llm"], ["tools"]]
    created = [(e.event.source, e.event.text) for e in of_type(envs, "agent.speech_created")]
    assert created[0] == ("greeting", "Hi, this is the test line.")
    assert [s for s, _ in created[1:]] == ["reply", "reply"]


async def test_play_background_and_dtmf_reach_the_caller(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack:
        await stack.add_agent()
        rec = Recorder(stack)
        async with stack.call() as call:
            sid = await stack.session_id(call)
            await rec.wait_type("agent.speech_completed", sid=sid)
            host_call = live_call(stack, sid)
            await call.wait_agent_quiet()

            # A recording, played to the end.
            clip = tone(PLAY_HZ, 0.6, 22050, amp=8000)
            stereo = np.repeat(clip, 2)  # any rate, stereo folds to mono
            buf = io.BytesIO()
            with wave.open(buf, "wb") as w:
                w.setnchannels(2)
                w.setsampwidth(2)
                w.setframerate(22050)
                w.writeframes(stereo.astype("<i2").tobytes())
            start = len(heard(call))
            play_id = await host_call.play(buf.getvalue())
            (done,) = [e.event for e in await rec.wait_type("play.completed", sid=sid)]
            assert done.play_id == play_id and not done.interrupted
            await asyncio.sleep(0.3)
            assert level(heard(call)[start:], PLAY_HZ) > 1000
            for bad in (b"", b"RIFF", b"not a wav at all", wav_bytes(np.zeros(0), 8000)):
                with pytest.raises(ValueError, match="WAV"):
                    await host_call.play(bad)

            # A recording cut by interrupt() reports interrupted.
            long_id = await host_call.play(wav_bytes(tone(PLAY_HZ, 5.0, 8000), 8000))
            await rec.wait_type("agent.speech_started", sid=sid, n=3)
            await asyncio.sleep(0.3)
            host_call._conv().interrupt()
            cut = [e.event for e in await rec.wait_type("play.completed", sid=sid, n=2)][1]
            assert cut.play_id == long_id and cut.interrupted

            # Background while the agent is silent, then stopped.
            await call.wait_agent_quiet()
            host_call.play_background("hold_music", volume=0.8)
            bed = await heard_over(call, 1.5)
            assert np.sqrt(np.mean(bed[4000:].astype(np.float64) ** 2)) > 300
            assert level(bed, PLAY_HZ) < 100
            # The agent's audio goes over it; cutting that audio (a barge-in's clear) leaves
            # the background playing.
            start = len(heard(call))
            await host_call.play(wav_bytes(tone(PLAY_HZ, 4.0, 8000), 8000))
            await rec.wait_type("agent.speech_started", sid=sid, n=4)
            await asyncio.sleep(0.8)
            host_call._conv().interrupt()
            await rec.wait_type("play.completed", sid=sid, n=3)
            mixed = heard(call)[start:]
            assert level(mixed, PLAY_HZ) > 1000
            after_cut = await heard_over(call, 1.0)
            assert level(after_cut[1600:], PLAY_HZ) < 100
            assert np.sqrt(np.mean(after_cut[1600:].astype(np.float64) ** 2)) > 300
            host_call.stop_background()
            await asyncio.sleep(0.3)
            after = await heard_over(call, 0.6)
            assert not np.any(after)
            with pytest.raises(ValueError, match="sound"):
                host_call.play_background("disco")

            await host_call.send_dtmf("42")
            await rec.wait_type("dtmf.sent", sid=sid)
            await call.wait_for(lambda: "".join(call.result.dtmf_received) == "42",
                                within_s=5)

    envs = rec.session(sid)
    assert [e.event.digits for e in of_type(envs, "dtmf.sent")] == ["42"]
    sources = [e.event.source for e in of_type(envs, "agent.speech_created")]
    assert sources == ["greeting", "play", "play", "play"]
