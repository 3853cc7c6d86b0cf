"""The customer app's parts on their own: command parsing and the text-mode LLM."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from app.agent_config import AppSocketSettings
from app.calls.customer_app import commands as cmd
from app.calls.customer_app.text_llm import AppLLM
from providers.base import ProviderError


def parse(msg: Any) -> cmd.Command:
    return cmd.parse_command(msg if isinstance(msg, str) else json.dumps(msg))


def test_commands_in_agentstack_and_plivo_words() -> None:
    assert parse({"type": "tool.result", "id": "c1", "result": {"a": 1}}) == cmd.ToolResult(
        id="c1", result={"a": 1})
    assert parse({"type": "text", "token": "Hi", "last": True}) == cmd.TextToken(
        token="Hi", last=True)
    transfer = parse({"type": "agent_session.transfer", "destination": "+14155550100",
                      "dial_mode": "parallel", "timeout": 30.0})
    assert isinstance(transfer, cmd.Transfer) and transfer.destination == ["+14155550100"]
    play = parse({"event": "playAudio", "streamId": "s", "media": {
        "contentType": "audio/x-l16", "sampleRate": 16000,
        "payload": base64.b64encode(b"\x00\x01").decode()}})
    assert play == cmd.PlayAudio(content_type="audio/x-l16", sample_rate=16000,
                                 payload=b"\x00\x01")
    wav = parse({"type": "agent_session.play", "audio_data": base64.b64encode(b"RIFF").decode()})
    assert isinstance(wav, cmd.Play) and wav.audio_data == b"RIFF"
    assert parse({"type": "audio.mix_enable", "enabled": False}) == cmd.MixEnable(enabled=False)


@pytest.mark.parametrize(("raw", "code", "says"), [
    ("{", "invalid_message", "not JSON"),
    ("[]", "invalid_message", "JSON object"),
    ({"event": "nope"}, "unknown_type", "nope"),
    ({"type": "agent_session.send_dtmf", "digits": "12<x>"}, "invalid_message", "digits"),
    ({"type": "audio.mix", "sound": "x", "volume": 3}, "invalid_message", "volume"),
    ({"type": "agent_session.play", "audio_data": "***"}, "invalid_message", "audio_data"),
    ({"event": "playAudio", "media": {"payload": 5}}, "invalid_message", "media.payload"),
    ({"event": "playAudio", "media": {"payload": "", "sampleRate": 7}}, "invalid_message",
     "sample_rate"),
])
def test_bad_commands_name_what_is_wrong(raw: Any, code: str, says: str) -> None:
    with pytest.raises(cmd.InvalidMessage) as err:
        parse(raw)
    assert err.value.code == code and says in err.value.message


class Wire:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def __call__(self, msg: dict[str, Any]) -> None:
        self.sent.append(msg)


async def _collect(llm: AppLLM, out: list[str]) -> None:
    async for delta in llm.stream([{"role": "user", "content": "hi"}]):
        out.append(delta.text)


async def test_text_llm_streams_the_apps_tokens() -> None:
    wire = Wire()
    llm = AppLLM(wire, AppSocketSettings(reply_timeout_s=1))
    out: list[str] = []
    task = asyncio.create_task(_collect(llm, out))
    await asyncio.sleep(0.01)
    (req,) = wire.sent
    assert req["type"] == "llm.request" and req["messages"][-1]["content"] == "hi"
    assert llm.on_token(cmd.TextToken(token="Hel"))
    assert llm.on_token(cmd.TextToken(token="lo", last=True, request_id=req["request_id"]))
    await task
    assert out == ["Hel", "lo"] and len(wire.sent) == 1  # finished: no cancel sent


async def test_text_llm_times_out_unless_the_app_asks_for_time() -> None:
    wire = Wire()
    llm = AppLLM(wire, AppSocketSettings(reply_timeout_s=0.2))
    with pytest.raises(ProviderError):
        await _collect(llm, [])
    assert wire.sent[-1]["type"] == "llm.cancelled" and wire.sent[-1]["reason"] == "timeout"

    out: list[str] = []
    task = asyncio.create_task(_collect(llm, out))
    await asyncio.sleep(0.1)
    assert llm.extend_wait(0.5)
    await asyncio.sleep(0.3)  # past the original deadline
    assert not task.done()
    llm.on_token(cmd.TextToken(token="ok", last=True))
    await task
    assert out == ["ok"]


async def test_cancelled_request_is_reported_and_its_late_tokens_dropped() -> None:
    wire = Wire()
    llm = AppLLM(wire, AppSocketSettings(reply_timeout_s=5))
    task = asyncio.create_task(_collect(llm, []))
    await asyncio.sleep(0.01)
    rid = wire.sent[0]["request_id"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert wire.sent[-1] == {"type": "llm.cancelled", "request_id": rid, "reason": "cancelled"}
    assert llm.on_token(cmd.TextToken(token="late", request_id=rid))  # dropped quietly
    assert not llm.on_token(cmd.TextToken(token="?", request_id="req_unknown"))
