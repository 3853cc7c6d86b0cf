"""examples/apps/*.py: each example's app, served in-process, answers like the docs say."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.events.local_http import LocalHttpServer, Received
from tests.voiceapp.conftest import SECRET, phonebooth, recv, send, serving, started

APPS = Path(__file__).resolve().parents[2] / "examples" / "apps"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"voiceapp_example_{name}", APPS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["managed_tools", "text_llm", "audio_echo"])
def test_example_has_a_cli(name: str, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    module = load(name)
    assert "--port 9000 --secret whsec_" in (module.__doc__ or "")
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit):
        module.main()
    assert "--secret" in capsys.readouterr().out


async def test_managed_tools_answers_both_tools() -> None:
    app = load("managed_tools").build_app(SECRET, slow_s=0.05)
    async with serving(app) as server, phonebooth(server) as ws:
        await send(ws, started())

        def called(id: str, name: str, **args: Any) -> dict[str, Any]:
            return {"type": "tool.called", "agent_session_id": "sess_1", "id": id,
                    "name": name, "arguments": args, "respond": True}

        await send(ws, called("t1", "order_status", order_id="1001"))
        assert await recv(ws) == {"type": "tool.result", "id": "t1", "result": {
            "status": "shipped", "carrier": "UPS", "eta": "Thursday", "total": 42.5}}
        await send(ws, called("t2", "order_status", order_id="9"))
        assert await recv(ws) == {"type": "tool.error", "id": "t2", "error": "no such order"}
        await send(ws, called("t3", "refund_estimate", order_id="1002"))
        assert await recv(ws) == {"type": "agent_session.extend_wait", "seconds": 5.05}
        result = await recv(ws)
        assert result["type"] == "tool.result" and result["id"] == "t3"
        assert result["result"]["refund"] == 17.99
        await send(ws, {**called("t4", "end_call"), "respond": False})  # information only
        await send(ws, called("t5", "nope"))
        assert await recv(ws) == {"type": "tool.error", "id": "t5",
                                  "error": "unknown tool 'nope'"}


async def _answer(ws: Any, request_id: str) -> str:
    tokens = []
    while True:
        message = await recv(ws)
        assert message["type"] == "text" and message["request_id"] == request_id
        tokens.append(message["token"])
        if message["last"]:
            return "".join(tokens)


def _request(request_id: str, said: str) -> dict[str, Any]:
    return {"type": "llm.request", "agent_session_id": "sess_1", "request_id": request_id,
            "turn_id": "turn_1", "tools": [],
            "messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": said}]}


async def test_text_llm_streams_the_rule_based_answer_and_stops_on_cancel() -> None:
    app = load("text_llm").build_app(SECRET)
    async with serving(app) as server, phonebooth(server) as ws:
        await send(ws, started(mode="text"))
        await send(ws, _request("r_1", "When are you open?"))
        assert (await _answer(ws, "r_1")).strip() == "We are open nine to five, Monday to Friday."
        await send(ws, _request("r_2", "how much does it cost"))
        first = await recv(ws)
        assert first["request_id"] == "r_2" and not first["last"]
        await send(ws, {"type": "llm.cancelled", "request_id": "r_2", "reason": "interrupted"})
        await send(ws, _request("r_3", "bye"))
        late = []  # r_2's tokens sent before the cancel arrived: at most one or two
        while (m := await recv(ws))["request_id"] != "r_3":
            late.append(m)
        assert len(late) <= 2 and not any(m["last"] for m in late)
        assert m["token"] == "Thanks "


async def test_text_llm_streams_from_an_openai_compatible_endpoint() -> None:
    def chunk(content: str) -> bytes:
        return b"data: " + json.dumps({"choices": [{"delta": {"content": content}}]}).encode()

    sse = b"\n\n".join([chunk("Hi"), chunk(" there"), chunk("!"), b"data: [DONE]", b""])

    def respond(r: Received) -> tuple[int, dict[str, str], bytes]:
        return 200, {"Content-Type": "text/event-stream"}, sse

    with LocalHttpServer(respond) as llm:
        app = load("text_llm").build_app(SECRET, openai_url=llm.url + "/v1", model="tiny",
                                         api_key="sk-test")
        async with serving(app) as server, phonebooth(server) as ws:
            await send(ws, _request("r_1", "hello"))
            assert await _answer(ws, "r_1") == "Hi there!"
        (request,) = llm.snapshot()
    assert request.path == "/v1/chat/completions"
    assert request.headers["Authorization"] == "Bearer sk-test"
    body = json.loads(request.body)
    assert body["model"] == "tiny" and body["stream"] is True
    assert body["messages"][-1] == {"role": "user", "content": "hello"}


async def test_audio_echo_echoes_after_the_delay_with_checkpoints_and_clears_on_hash() -> None:
    module = load("audio_echo")
    app = module.build_app(SECRET, delay_s=0.2)
    n = module.CHUNKS_PER_CHECKPOINT
    loop = asyncio.get_running_loop()
    async with serving(app) as server, phonebooth(server) as ws:
        await send(ws, {"event": "start", "start": {
            "streamId": "st_1", "callId": "c_1",
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}}})
        sent_at = loop.time()
        for i in range(n):
            await send(ws, {"event": "media", "media": {"track": "inbound", "chunk": i,
                                                        "timestamp": str(20 * i),
                                                        "payload": f"p{i}"}})
        first = await recv(ws)
        assert loop.time() - sent_at >= 0.15
        assert first == {"event": "playAudio", "media": {
            "contentType": "audio/x-mulaw", "sampleRate": 8000, "payload": "p0"}}
        echoed = [first] + [await recv(ws) for _ in range(n)]
        assert [m["media"]["payload"] for m in echoed[:n]] == [f"p{i}" for i in range(n)]
        assert echoed[n] == {"event": "checkpoint", "name": "echo-1"}

        for i in range(5):
            await send(ws, {"event": "media", "media": {"payload": f"q{i}"}})
        await send(ws, {"event": "dtmf", "dtmf": {"digit": "#"}})
        assert await recv(ws) == {"event": "clearAudio"}
        with pytest.raises(asyncio.TimeoutError):
            await recv(ws, within_s=0.4)  # the audio heard before "#" is never echoed
        await send(ws, {"event": "media", "media": {"payload": "after"}})
        assert (await recv(ws))["media"]["payload"] == "after"
