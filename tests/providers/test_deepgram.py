"""Deepgram adapters (live STT over WebSocket, Aura TTS over streaming REST) against the fake."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from pipelines.audio.g711 import ulaw_encode
from providers.base import ProviderContext, ProviderError, STTStream, Transcript
from providers.fallback import Cooldowns
from providers.stt.deepgram import DeepgramSTT
from providers.stt_recovery import RecoveringSTT, STTRecovery
from providers.tts.deepgram import DeepgramTTS
from tests.fakes.fake_deepgram import FakeDeepgram
from tests.fakes.harness import all_logs_at_debug, collect, context
from tests.fakes.vendor_base import FAKE_API_KEY, Failure, tone
from tests.providers.cloud_helpers import (
    adapter,
    assert_key_never_logged,
    cancel_promptly,
    vendor_fixtures,
)

FRAME = 320  # 20 ms at 16 kHz

server, fake = vendor_fixtures(FakeDeepgram, idle_timeout_s=10.0)


def stt(fake: FakeDeepgram, ctx: ProviderContext, **opts: Any) -> DeepgramSTT:
    return adapter(DeepgramSTT, fake.ws_base_url, ctx, **opts)


def recovering(fake: FakeDeepgram, ctx: ProviderContext,
               recovery: STTRecovery | None = None) -> RecoveringSTT:
    """The adapter as an agent gets it: behind the STT recovery layer (reopens, replays)."""
    return RecoveringSTT([(stt(fake, ctx), 5.0)], recovery=recovery, cooldowns=Cooldowns())


async def speak(stream: STTStream, seconds: float, rate: int = 16000, start: int = 0,
                silent: bool = False) -> None:
    """Push `seconds` of 20 ms frames (a loud tone, or silence) as a caller would."""
    n = int(seconds * rate)
    audio = np.zeros(n, np.int16) if silent else tone(n, rate, start=start)
    step = rate // 50
    for i in range(0, n, step):
        await stream.push(audio[i:i + step])
        if i % (step * 10) == 0:
            await asyncio.sleep(0)  # let the receive side run, as a real call would


async def next_final(events: AsyncIterator[Transcript], within_s: float = 5.0) -> tuple[
        Transcript, list[Transcript]]:
    interims: list[Transcript] = []
    async with asyncio.timeout(within_s):
        async for tr in events:
            if tr.is_final:
                return tr, interims
            interims.append(tr)
    raise AssertionError("stream ended without a final transcript")


# ---------------------------------------------------------------------------------------------
# STT
# ---------------------------------------------------------------------------------------------


async def test_interims_then_final_on_flush(fake: FakeDeepgram, cx: Any) -> None:
    ctx, got = cx
    fake.queue_transcript("what are your opening hours")
    s = await stt(fake, ctx, keyterms=["Phonebooth"]).open(16000, "en-US")
    events = s.events()
    await speak(s, 1.2)
    await s.flush()
    final, interims = await next_final(events)
    assert final.text == "what are your opening hours" and final.is_final
    assert (final.start_ms, final.end_ms) == (0, 1200)
    assert interims and all(not t.is_final for t in interims)
    assert all("what are your opening hours".startswith(t.text) for t in interims)
    rec = fake.for_endpoint("listen")[0]
    assert rec.headers["authorization"] == f"Token {FAKE_API_KEY}"
    assert {k: rec.q(k) for k in ("model", "language", "encoding", "sample_rate", "channels",
                                  "interim_results", "endpointing", "smart_format",
                                  "keyterm")} == {
        "model": "nova-3", "language": "en-US", "encoding": "linear16", "sample_rate": "16000",
        "channels": "1", "interim_results": "true", "endpointing": "300",
        "smart_format": "true", "keyterm": "Phonebooth"}
    assert {"type": "Finalize"} in rec.messages
    assert len(got.ttfb("deepgram")) == 1  # flush → final latency
    t0 = time.monotonic()
    await s.aclose()
    assert {"type": "CloseStream"} in rec.messages
    await fake.until(lambda: rec.closed_at is not None)
    assert rec.closed_at is not None and rec.closed_at - t0 < 1.0
    assert got.total("audio_seconds") == pytest.approx(1.2)
    assert [t async for t in events] == []  # the iterator ends after aclose


async def test_flush_with_nothing_pending_gives_an_immediate_empty_final(
        fake: FakeDeepgram, cx: Any) -> None:
    ctx, _ = cx
    s = await stt(fake, ctx).open(16000, "en-US")
    events = s.events()
    await speak(s, 0.6)
    await s.flush()
    first, _ = await next_final(events)
    t0 = time.monotonic()
    await s.flush()  # the turn is already final: no round trip needed
    second, _ = await next_final(events, within_s=0.5)
    assert first.text == "hello world" and second.text == ""
    assert time.monotonic() - t0 < 0.5
    await s.aclose()


async def test_keepalive_holds_a_silent_stream_open(fake: FakeDeepgram, cx: Any) -> None:
    ctx, _ = cx
    fake.idle_timeout_s = 0.6  # the real service gives up after ~10 s (NET-0001)
    s = await stt(fake, ctx, keepalive_interval_s=0.2).open(16000, "en-US")
    await asyncio.sleep(1.5)  # no audio at all, e.g. the agent is talking
    rec = fake.for_endpoint("listen")[0]
    keepalives = [m for m in rec.messages if m == {"type": "KeepAlive"}]
    assert len(keepalives) >= 3
    assert not [e for e in rec.events if e[1] == "idle-timeout"]
    assert len(fake.for_endpoint("listen")) == 1
    events = s.events()
    await speak(s, 0.6)
    await s.flush()
    final, _ = await next_final(events)
    assert final.text == "hello world"
    await s.aclose()


async def test_a_drop_fails_the_stream_without_reconnecting(fake: FakeDeepgram,
                                                             cx: Any) -> None:
    """The adapter keeps no replay copy: a dropped socket is the recovery layer's to handle."""
    ctx, _ = cx
    fake.fail_next("listen", Failure("drop", after=5))
    s = await stt(fake, ctx).open(16000, "en-US")
    events = s.events()
    with pytest.raises(ProviderError) as exc:
        await speak(s, 0.5)
        await next_final(events)
    assert "1006" in exc.value.message and exc.value.retryable
    assert len(fake.for_endpoint("listen")) == 1
    await s.aclose()


async def test_drop_mid_turn_reconnects_and_replays_the_turn(fake: FakeDeepgram,
                                                             cx: Any) -> None:
    ctx, _ = cx
    fake.queue_transcript("book a table for four")
    fake.fail_next("listen", Failure("drop", after=25))  # cut 0.5 s into the turn
    s = await recovering(fake, ctx).open(16000, "en-US")
    events = s.events()
    await speak(s, 1.0)
    await fake.until(lambda: len(fake.for_endpoint("listen")) == 2)
    await speak(s, 0.4, start=16000)
    await s.flush()
    final, _ = await next_final(events)
    assert final.text == "book a table for four"
    assert (final.start_ms, final.end_ms) == (0, 1400)
    first, second = fake.for_endpoint("listen")
    assert [e for e in first.events if e[1] == "dropped"]
    # The new connection got the whole turn: replayed audio plus what followed.
    assert second.audio_bytes == int(1.4 * 16000) * 2
    await s.aclose()


async def test_replay_covers_only_audio_after_the_last_final(fake: FakeDeepgram,
                                                             cx: Any) -> None:
    ctx, _ = cx
    fake.queue_transcript("first turn", "second turn")
    fake.fail_next("listen", Failure("drop", after=70))  # 50 frames + flush, then 20 more
    s = await recovering(fake, ctx).open(16000, "en-US")
    events = s.events()
    await speak(s, 1.0)
    await s.flush()
    first_final, _ = await next_final(events)
    assert first_final.text == "first turn"
    await speak(s, 0.6)  # the drop happens in here
    await fake.until(lambda: len(fake.for_endpoint("listen")) == 2)
    await s.flush()
    second_final, _ = await next_final(events)
    assert second_final.text == "second turn"
    assert (second_final.start_ms, second_final.end_ms) == (1000, 1600)
    second = fake.for_endpoint("listen")[1]
    assert second.audio_bytes == int(0.6 * 16000) * 2  # the first turn was not resent
    await s.aclose()


async def test_close_codes_map_to_provider_errors(fake: FakeDeepgram, cx: Any) -> None:
    ctx, _ = cx
    fake.fail_always("listen", Failure("close", after=5, close_code=1011, close_reason="NET-0000"))
    s = await recovering(fake, ctx, STTRecovery(reconnect_attempts=1)).open(16000, "en-US")
    events = s.events()
    with pytest.raises(ProviderError) as exc:
        await speak(s, 0.5)
        await next_final(events)
    assert "1011" in exc.value.message and "NET-0000" in exc.value.message
    assert exc.value.code == "NET-0000" and exc.value.retryable
    with pytest.raises(ProviderError):
        await s.push(np.zeros(FRAME, np.int16))  # the failure also surfaces on push
    await s.aclose()


async def test_vendor_down_after_a_drop_fails_within_the_reconnect_budget(
        fake: FakeDeepgram, cx: Any) -> None:
    ctx, _ = cx
    fake.fail_next("listen", Failure("drop", after=5))
    # A budget with room for a local handshake on a loaded 2-core box: it must run out on the
    # vendor's 503s, not on our own handshake timeout.
    s = await recovering(fake, ctx, STTRecovery(reconnect_budget_s=2.0, reconnect_attempts=10)
                         ).open(16000, "en")
    fake.fail_always("listen", Failure("status", status=503, message="Service Unavailable"))
    events = s.events()
    t0 = time.monotonic()
    with pytest.raises(ProviderError) as exc:
        await speak(s, 0.3)
        await next_final(events)
    assert time.monotonic() - t0 < 2.0 + 1.0  # then the fallback STT can take over
    assert exc.value.status == 503 and "Service Unavailable" in exc.value.message
    assert len(fake.for_endpoint("listen")) >= 2
    await s.aclose()


async def test_refused_upgrade_and_handshake_retry(fake: FakeDeepgram, cx: Any) -> None:
    ctx, _ = cx
    async with context({"FAKE_VENDOR_KEY": "wrong-key-0000000000"}) as (bad_ctx, _):
        with pytest.raises(ProviderError) as exc:
            await stt(fake, bad_ctx).open(16000, "en-US")
    assert exc.value.status == 401 and exc.value.code == "INVALID_AUTH"
    assert exc.value.message == "HTTP 401: Invalid credentials."
    assert len(fake.for_endpoint("listen")) == 1  # auth errors are not retried
    fake.fail_next("listen", Failure("status", status=429, message="Too many requests",
                                     retry_after=0.2))
    t0 = time.monotonic()
    s = await stt(fake, ctx).open(16000, "en-US")
    assert time.monotonic() - t0 >= 0.2
    assert [r.status for r in fake.for_endpoint("listen")[1:]] == [429, 200]
    await s.aclose()


async def test_finalize_without_answer_promotes_the_last_interim(fake: FakeDeepgram,
                                                                 cx: Any) -> None:
    ctx, _ = cx
    s = await stt(fake, ctx, finalize_timeout_s=0.3).open(16000, "en-US")
    events = s.events()
    await speak(s, 0.8)
    interim = await asyncio.wait_for(anext(events), 5)
    assert not interim.is_final
    fake.respond_to_finalize = False
    rec = fake.for_endpoint("listen")[0]
    t0 = time.monotonic()
    await s.flush()
    final, _ = await next_final(events)
    assert final.is_final and final.text == interim.text
    assert time.monotonic() - t0 >= 0.3
    assert rec.closed_at is None
    await s.aclose()


async def test_a_hung_connection_fails_the_stream_instead_of_promoting(
        fake: FakeDeepgram, cx: Any) -> None:
    """The server stops answering mid-utterance (accepts audio, sends nothing): the unanswered
    Finalize fails the stream with a retryable timeout, so the owner can replace it — promoting
    the stale interim would end the turn on a fragment and leave later turns without results."""
    ctx, _ = cx
    live = Failure("drop", after=10**9)  # inert until flipped into a hang below
    fake.fail_next("listen", live)
    s = await stt(fake, ctx, finalize_timeout_s=0.3).open(16000, "en-US")
    events = s.events()
    await speak(s, 0.5)
    interim = await asyncio.wait_for(anext(events), 5)
    assert not interim.is_final
    rec = fake.for_endpoint("listen")[0]
    # Let the fake read all of that audio before it hangs, then take every interim it sent:
    # one still on its way when Finalize goes out would count as the server answering.
    await fake.until(lambda: rec.audio_bytes >= 16000, within_s=10)
    live.kind = "hang"  # the fake swallows everything from now on
    sent = sum(1 for _, what, _ in rec.events if what == "interim-sent")
    for _ in range(sent - 1):
        assert not (await asyncio.wait_for(anext(events), 5)).is_final
    await speak(s, 0.8, start=8000)
    t0 = time.monotonic()
    await s.flush()
    with pytest.raises(ProviderError) as exc:
        await next_final(events)
    assert exc.value.code == "timeout" and exc.value.retryable
    assert time.monotonic() - t0 >= 0.3
    await fake.until(lambda: rec.closed_at is not None)
    assert len(fake.for_endpoint("listen")) == 1  # no reconnect: the owner replaces the stream
    await s.aclose()


async def test_mulaw_passthrough_at_8khz(fake: FakeDeepgram, cx: Any) -> None:
    ctx, _ = cx
    with pytest.raises(ProviderError, match="8000 Hz"):
        await stt(fake, ctx, encoding="mulaw").open(16000, "en-US")
    s = await stt(fake, ctx, encoding="mulaw", model="nova-2-phonecall",
                  language="en-GB").open(8000, "en-US")
    events = s.events()
    audio = tone(8000, 8000)
    for i in range(0, audio.size, 160):
        await s.push(audio[i:i + 160])
    await s.flush()
    final, _ = await next_final(events)
    assert final.text == "hello world" and final.end_ms == 1000
    rec = fake.for_endpoint("listen")[-1]
    assert (rec.q("encoding"), rec.q("sample_rate"), rec.q("model"), rec.q("language")) == (
        "mulaw", "8000", "nova-2-phonecall", "en-GB")
    assert rec.audio_bytes == 8000  # one byte per sample: G.711 on the wire
    assert rec.messages[0] == 160
    assert ulaw_encode(audio[:160])  # (the same codec the fake decodes with)
    await s.aclose()


# ---------------------------------------------------------------------------------------------
# TTS (Aura)
# ---------------------------------------------------------------------------------------------


def aura(fake: FakeDeepgram, ctx: ProviderContext, **opts: Any) -> DeepgramTTS:
    return adapter(DeepgramTTS, fake.http_base_url, ctx, **opts)


async def test_aura_streams_linear16_in_order(fake: FakeDeepgram, cx: Any) -> None:
    ctx, got = cx
    text = "Your table is booked for eight."
    tts = aura(fake, ctx)
    assert tts.sample_rate == 16000 and not tts.prefers_mulaw()
    chunks = await collect(tts.synthesize(text, voice="aura-2-andromeda-en"))
    assert len(chunks) > 2 and all(c.encoding == "pcm16" for c in chunks)
    audio = np.concatenate([c.samples for c in chunks])
    assert audio.astype("<i2").tobytes() == fake.speak_audio(text, "linear16", 16000)
    rec = fake.requests[-1]
    assert rec.headers["authorization"] == f"Token {FAKE_API_KEY}"
    assert (rec.q("model"), rec.q("encoding"), rec.q("sample_rate"), rec.q("container")) == (
        "aura-2-andromeda-en", "linear16", "16000", "none")
    assert json.loads(rec.body) == {"text": text}
    assert got.total("characters") == len(text) and len(got.ttfb("deepgram")) == 1


async def test_aura_mulaw_output(fake: FakeDeepgram, cx: Any) -> None:
    ctx, _ = cx
    tts = aura(fake, ctx, output="mulaw_8000")
    assert tts.prefers_mulaw() and tts.sample_rate == 8000
    chunks = await collect(tts.synthesize("Goodbye."))
    assert all(c.encoding == "mulaw" and c.samples.dtype == np.uint8 for c in chunks)
    assert np.concatenate([c.samples for c in chunks]).tobytes() == \
        fake.speak_audio("Goodbye.", "mulaw", 8000)


async def test_aura_errors_and_cancel(fake: FakeDeepgram, cx: Any) -> None:
    ctx, _ = cx
    fake.fail_next("speak", Failure("status", status=400, code="UNSUPPORTED_MODEL",
                                    message="No such model: aura-9"))
    with pytest.raises(ProviderError) as exc:
        await collect(aura(fake, ctx).synthesize("Hi."))
    assert exc.value.code == "UNSUPPORTED_MODEL" and "No such model" in exc.value.message
    assert not exc.value.retryable
    fake.chunk_delay_s = 0.5
    gen = aura(fake, ctx).synthesize("A fairly long sentence to be interrupted halfway.")
    await anext(gen)
    rec = await cancel_promptly(fake, gen)
    assert not rec.completed


async def test_api_key_never_reaches_the_logs(fake: FakeDeepgram, cx: Any,
                                              caplog: pytest.LogCaptureFixture) -> None:
    ctx, _ = cx
    with all_logs_at_debug(caplog):
        fake.fail_next("listen", Failure("drop", after=10))
        s = await recovering(fake, ctx).open(16000, "en-US")
        events = s.events()
        await speak(s, 0.6)
        await fake.until(lambda: len(fake.for_endpoint("listen")) == 2)
        await s.flush()
        await next_final(events)
        await s.aclose()
        await collect(aura(fake, ctx).synthesize("Hello."))
    text = caplog.text
    # websockets logged the handshake, redacted (`Token` itself may be masked too, by the
    # service's own log redaction when an app was set up earlier in the process)
    assert re.search(r"> Authorization: (Token|\[REDACTED\]) \*\*\*", text)
    assert_key_never_logged(caplog)
