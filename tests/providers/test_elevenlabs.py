"""TTS `elevenlabs` (stream-input WebSocket) against the local ElevenLabs fake."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from providers.base import ProviderContext, ProviderError
from providers.tts.elevenlabs import ElevenLabsTTS
from tests.fakes.fake_elevenlabs import FakeElevenLabs
from tests.fakes.harness import KEY_REF, all_logs_at_debug, collect, context
from tests.fakes.vendor_base import FAKE_API_KEY, Failure
from tests.providers.cloud_helpers import (
    adapter,
    assert_key_never_logged,
    cancel_promptly,
    vendor_fixtures,
)

TEXT = "Thanks for calling the bakery, how can I help you today?"

server, fake = vendor_fixtures(FakeElevenLabs, inactivity_timeout_s=20.0)


def eleven(fake: FakeElevenLabs, ctx: ProviderContext, **opts: Any) -> ElevenLabsTTS:
    return adapter(ElevenLabsTTS, fake.ws_base_url, ctx, **opts)


async def test_pcm_audio_arrives_complete_and_in_order(fake: FakeElevenLabs, cx: Any) -> None:
    ctx, got = cx
    tts = eleven(fake, ctx, stability=0.4, speed=1.1)
    assert tts.sample_rate == 16000 and not tts.prefers_mulaw()
    chunks = await collect(tts.synthesize(TEXT))
    assert len(chunks) > 3
    assert all(c.sample_rate == 16000 and c.encoding == "pcm16" for c in chunks)
    assert np.array_equal(np.concatenate([c.samples for c in chunks]),
                          fake.expected_audio(TEXT, "pcm_16000"))
    rec = fake.requests[-1]
    assert rec.path == "/v1/text-to-speech/21m00Tcm4TlvDq8ikWAM/stream-input"
    assert rec.headers["xi-api-key"] == FAKE_API_KEY
    assert (rec.q("model_id"), rec.q("output_format"), rec.q("auto_mode")) == (
        "eleven_flash_v2_5", "pcm_16000", "true")
    assert rec.messages == [
        {"text": " ", "voice_settings": {"stability": 0.4, "similarity_boost": 0.75,
                                         "speed": 1.1}},
        {"text": TEXT + " ", "flush": True},
        {"text": ""},
    ]
    assert "xi_api_key" not in rec.messages[0]  # the key travels in the header only
    await fake.until(lambda: rec.completed)  # isFinal, then a normal close
    assert got.total("characters") == len(TEXT) and len(got.ttfb("elevenlabs")) == 1


async def test_mulaw_8000_passthrough(fake: FakeElevenLabs, cx: Any) -> None:
    ctx, _ = cx
    tts = eleven(fake, ctx, output="mulaw_8000")
    assert tts.prefers_mulaw() and tts.sample_rate == 8000
    chunks = await collect(tts.synthesize("Goodbye!", voice="pNInz6obpgDQGcFmaJgB"))
    assert all(c.encoding == "mulaw" and c.sample_rate == 8000 and c.samples.dtype == np.uint8
               for c in chunks)
    assert np.array_equal(np.concatenate([c.samples for c in chunks]),
                          fake.expected_audio("Goodbye!", "ulaw_8000"))
    rec = fake.requests[-1]
    assert rec.q("output_format") == "ulaw_8000"
    assert rec.path == "/v1/text-to-speech/pNInz6obpgDQGcFmaJgB/stream-input"
    assert rec.messages[0] == {"text": " "}  # no voice settings configured


async def test_cancel_closes_the_socket_promptly(fake: FakeElevenLabs, cx: Any) -> None:
    ctx, _ = cx
    fake.chunk_delay_s = 0.4
    gen = eleven(fake, ctx).synthesize(TEXT)
    await anext(gen)
    rec = await cancel_promptly(fake, gen)  # barge-in
    assert not rec.completed


async def test_cancel_by_task_cancellation(fake: FakeElevenLabs, cx: Any) -> None:
    ctx, _ = cx
    fake.chunk_delay_s = 0.4
    started = asyncio.Event()

    async def play() -> None:
        async for _ in eleven(fake, ctx).synthesize(TEXT):
            started.set()

    task = asyncio.create_task(play())
    await started.wait()
    await cancel_promptly(fake, task)


async def test_vendor_errors_are_mapped(fake: FakeElevenLabs, cx: Any) -> None:
    ctx, _ = cx
    async with context({"FAKE_VENDOR_KEY": "not-the-right-key-123"}) as (bad, _):
        with pytest.raises(ProviderError) as exc:
            await collect(eleven(fake, bad).synthesize("Hi."))
    assert exc.value.message == "Invalid API key" and exc.value.code == "invalid_api_key"
    fake.fail_next("stream-input", Failure("error_event", message="Voice not found",
                                           code="voice_not_found"))
    with pytest.raises(ProviderError) as exc:
        await collect(eleven(fake, ctx).synthesize("Hi."))
    assert exc.value.message == "Voice not found" and exc.value.code == "voice_not_found"
    fake.fail_next("stream-input", Failure("close", after=2, close_code=1011,
                                           close_reason="Internal server error"))
    got: list[Any] = []
    with pytest.raises(ProviderError) as exc:
        async for chunk in eleven(fake, ctx).synthesize(TEXT):
            got.append(chunk)
    assert len(got) == 2 and exc.value.retryable
    assert "1011" in exc.value.message and "Internal server error" in exc.value.message
    fake.fail_next("stream-input", Failure("drop", after=1))
    with pytest.raises(ProviderError) as exc:
        await collect(eleven(fake, ctx).synthesize(TEXT))
    assert "1006" in exc.value.message


async def test_handshake_429_retried_and_hang_times_out(fake: FakeElevenLabs, cx: Any) -> None:
    ctx, _ = cx
    fake.fail_next("stream-input", Failure("status", status=429, message="Too many concurrent "
                                           "requests", code="too_many_concurrent_requests",
                                           retry_after=0.2))
    chunks = await collect(eleven(fake, ctx).synthesize("Hello."))
    assert chunks and [r.status for r in fake.requests] == [429, 200]
    assert fake.requests[1].started_at - fake.requests[0].started_at >= 0.2
    fake.fail_next("stream-input", Failure("status", status=429, message="Too many concurrent "
                                           "requests", code="too_many_concurrent_requests",
                                           retry_after=30))
    with pytest.raises(ProviderError) as exc:
        await collect(eleven(fake, ctx).synthesize("Hello."))
    assert exc.value.status == 429 and exc.value.code == "too_many_concurrent_requests"
    fake.fail_next("stream-input", Failure("hang"))
    with pytest.raises(ProviderError) as exc:
        await collect(eleven(fake, ctx, read_timeout_s=0.3).synthesize("Hello."))
    assert exc.value.code == "timeout"


async def test_api_key_never_reaches_the_logs(fake: FakeElevenLabs, cx: Any,
                                              caplog: pytest.LogCaptureFixture) -> None:
    ctx, _ = cx
    with all_logs_at_debug(caplog):
        await collect(eleven(fake, ctx).synthesize("Hello there."))
        fake.fail_next("stream-input", Failure("status", status=500, message=FAKE_API_KEY))
        await collect(eleven(fake, ctx).synthesize("Hello there."))
    assert "> xi-api-key: ***" in caplog.text
    assert_key_never_logged(caplog)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        ElevenLabsTTS.Config.model_validate({"api_key": KEY_REF, "output": "mp3_44100"})
    with pytest.raises(ValueError):
        ElevenLabsTTS.Config.model_validate({"output": "pcm_16000"})  # no key


async def test_render_hook_lets_the_fake_speak_real_audio() -> None:
    """End-to-end tests plug a real synthesiser into the fake vendor (here: a stand-in)."""

    def render(text: str, rate: int) -> np.ndarray:
        return np.arange(len(text) * rate // 100, dtype=np.int16)

    with FakeElevenLabs(render=render) as fake:
        async with context() as (ctx, _):
            chunks = await collect(eleven(fake, ctx).synthesize("Hi there."))
    assert np.array_equal(np.concatenate([c.samples for c in chunks]), render("Hi there.", 16000))


async def test_fake_closes_a_socket_whose_client_abandons_the_handshake(
        fake: FakeElevenLabs) -> None:
    """A client that sends its upgrade request and leaves before the answer (an open timeout, a
    cancelled reconnect) never reaches the fake's handler; the fake must still see that socket
    close, or a test checking that every vendor socket was closed waits on it forever."""
    host, port = fake.ws_base_url.removeprefix("ws://").split(":")
    for _ in range(5):
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            "GET /v1/text-to-speech/v1/stream-input?output_format=pcm_16000 HTTP/1.1\r\n"
            f"Host: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"xi-api-key: {FAKE_API_KEY}\r\n\r\n".encode())
        await writer.drain()
        writer.close()  # before reading the 101: the handshake is abandoned
        await writer.wait_closed()
    await fake.until(lambda: len(fake.for_endpoint("stream-input")) == 5)
    await fake.until(lambda: not fake.open_sockets())
    recs = fake.for_endpoint("stream-input")
    # Whether the fake's handler ran before it saw the close is a race (then the socket is not
    # noted as abandoned); either way every socket must be seen closed.
    assert all(r.status == 200 and r.closed_at is not None for r in recs)
