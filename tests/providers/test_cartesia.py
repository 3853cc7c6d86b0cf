"""TTS `cartesia` (one multiplexed WebSocket, context ids, continuations, cancel) against the
local Cartesia fake."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from providers.base import AudioChunk, ProviderError
from providers.tts.cartesia import CartesiaTTS
from tests.fakes.fake_cartesia import FakeCartesia
from tests.fakes.harness import all_logs_at_debug, collect, context
from tests.fakes.vendor_base import FAKE_API_KEY, Failure
from tests.providers.cloud_helpers import (
    CANCEL_BUDGET_S,
    adapter,
    assert_key_never_logged,
    vendor_fixtures,
)

server, fake = vendor_fixtures(FakeCartesia, context_expiry_s=1.0)


@pytest.fixture
async def make(fake: FakeCartesia, cx: Any) -> AsyncIterator[Any]:
    made: list[CartesiaTTS] = []

    def build(**opts: Any) -> CartesiaTTS:
        tts = adapter(CartesiaTTS, fake.ws_base_url, cx[0], **opts)
        made.append(tts)
        return tts

    yield build
    for tts in made:
        await tts.aclose()


def pcm(chunks: list[AudioChunk]) -> np.ndarray:
    return np.concatenate([c.samples for c in chunks])


async def test_sentences_share_one_socket_with_own_contexts(fake: FakeCartesia, cx: Any,
                                                            make: Any) -> None:
    _, got = cx
    tts = make(speed=1.2)
    a = await collect(tts.synthesize("Hello, thanks for calling."))
    b = await collect(tts.synthesize("How can I help?", voice="a0e99841-438c-4a64-b679"))
    assert np.array_equal(pcm(a), fake.expected_audio("Hello, thanks for calling."))
    assert np.array_equal(pcm(b), fake.expected_audio("How can I help?"))
    assert len(fake.requests) == 1  # one WebSocket for the whole call
    rec = fake.requests[0]
    assert rec.headers["authorization"] == f"Bearer {FAKE_API_KEY}"
    assert rec.headers["cartesia-version"] == "2026-03-01"
    assert "api_key" not in rec.query  # the key never goes into the URL
    first, second = rec.json_messages()
    assert first == {
        "model_id": "sonic-3", "transcript": "Hello, thanks for calling.",
        "voice": {"mode": "id", "id": "f786b574-daa5-4673-aa0c-cbe3e8534c02"},
        "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000},
        "language": "en", "context_id": first["context_id"], "continue": False,
        "generation_config": {"speed": 1.2}}
    assert second["voice"]["id"] == "a0e99841-438c-4a64-b679"
    assert first["context_id"] != second["context_id"]
    assert got.total("characters") == len("Hello, thanks for calling.") + len("How can I help?")
    assert len(got.ttfb("cartesia")) == 2


async def test_concurrent_sentences_are_demultiplexed(fake: FakeCartesia, make: Any) -> None:
    fake.chunk_delay_s = 0.02  # make the two streams interleave on the wire
    tts = make()
    texts = ["The first sentence is rather long.", "The second one overlaps it."]
    results = await asyncio.gather(*(collect(tts.synthesize(t)) for t in texts))
    for text, chunks in zip(texts, results, strict=True):
        assert np.array_equal(pcm(chunks), fake.expected_audio(text))
    assert len(fake.requests) == 1


async def test_cancel_sends_cancel_for_the_context_promptly(fake: FakeCartesia,
                                                            make: Any) -> None:
    fake.chunk_delay_s = 0.3
    tts = make()
    gen = tts.synthesize("A long answer that the caller is about to interrupt.")
    await anext(gen)
    t0 = time.monotonic()
    await gen.aclose()  # barge-in
    rec = fake.requests[0]
    await fake.until(lambda: any(e[1] == "cancel" for e in rec.events))
    at, _, cid = next(e for e in rec.events if e[1] == "cancel")
    assert at - t0 < CANCEL_BUDGET_S
    assert cid == rec.json_messages()[0]["context_id"]
    assert rec.closed_at is None  # the socket stays up for the next sentence
    fake.chunk_delay_s = 0.0
    chunks = await collect(tts.synthesize("Sure, go ahead."))
    assert np.array_equal(pcm(chunks), fake.expected_audio("Sure, go ahead."))
    assert len(fake.requests) == 1


async def test_continuations_keep_one_context_per_answer(fake: FakeCartesia,
                                                         make: Any) -> None:
    tts = make(continuations=True, continuation_window_ms=300)
    s1, s2 = "Your table is booked.", "See you at eight."
    a = await collect(tts.synthesize(s1))
    b = await collect(tts.synthesize(s2))
    # One continuous voice: the second sentence continues the first one's audio.
    n1 = fake.expected_audio(s1).size
    assert np.array_equal(pcm(a), fake.expected_audio(s1))
    assert np.array_equal(pcm(b), fake.expected_audio(" " + s2, start=n1))
    rec = fake.requests[0]
    await fake.until(lambda: len(rec.json_messages()) == 5)  # the idle context gets closed
    msgs = rec.json_messages()
    assert len({m["context_id"] for m in msgs}) == 1
    assert [(m["transcript"], m["continue"], m.get("flush", False)) for m in msgs] == [
        (s1, True, False), ("", True, True), (" " + s2, True, False), ("", True, True),
        ("", False, False)]
    # After the window a new answer starts a new context.
    await collect(tts.synthesize("Anything else?"))
    assert rec.json_messages()[-1]["context_id"] != msgs[0]["context_id"]


async def test_expired_continuation_is_retried_on_a_fresh_context(fake: FakeCartesia,
                                                                  make: Any) -> None:
    fake.context_expiry_s = 0.05  # the server forgets contexts sooner than our window
    tts = make(continuations=True, continuation_window_ms=800)
    await collect(tts.synthesize("First."))
    await asyncio.sleep(0.2)
    chunks = await collect(tts.synthesize("Second."))
    assert np.array_equal(pcm(chunks), fake.expected_audio("Second."))  # a fresh context
    rec = fake.requests[0]
    assert any(e[1] == "error" for e in rec.events)
    ids = [m["context_id"] for m in rec.json_messages()]
    assert len(set(ids)) == 2


async def test_mulaw_output(fake: FakeCartesia, make: Any) -> None:
    tts = make(output="mulaw_8000")
    assert tts.prefers_mulaw() and tts.sample_rate == 8000
    chunks = await collect(tts.synthesize("Goodbye."))
    assert all(c.encoding == "mulaw" and c.samples.dtype == np.uint8 for c in chunks)
    assert np.array_equal(pcm(chunks), fake.expected_audio("Goodbye.", "pcm_mulaw", 8000))
    assert fake.requests[0].json_messages()[0]["output_format"] == {
        "container": "raw", "encoding": "pcm_mulaw", "sample_rate": 8000}


async def test_errors_and_close_codes(fake: FakeCartesia, cx: Any, make: Any) -> None:
    async with context({"FAKE_VENDOR_KEY": "bad-key-00000000000"}) as (bad, _):
        wrong = adapter(CartesiaTTS, fake.ws_base_url, bad)
        with pytest.raises(ProviderError) as exc:
            await collect(wrong.synthesize("Hi."))
        await wrong.aclose()
    assert exc.value.status == 401 and exc.value.message == "HTTP 401: Invalid API key"
    fake.fail_next("websocket", Failure("error_event", status=400,
                                        message="Invalid voice: voice not found"))
    tts = make()
    with pytest.raises(ProviderError) as exc:
        await collect(tts.synthesize("Hi."))
    assert exc.value.status == 400 and "voice not found" in exc.value.message
    # The socket survives a per-context error.
    assert await collect(tts.synthesize("Still here."))
    # A dropped socket fails what is in flight; the next sentence reconnects.
    fake.fail_next("websocket", Failure("close", after=1, close_code=1011,
                                        close_reason="internal error"))
    tts2 = make()
    with pytest.raises(ProviderError) as exc:
        await collect(tts2.synthesize("A sentence long enough for several chunks."))
    assert "1011" in exc.value.message and exc.value.retryable
    assert await collect(tts2.synthesize("Reconnected."))
    assert len(fake.requests) == 4


async def test_api_key_never_reaches_the_logs(fake: FakeCartesia, make: Any,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with all_logs_at_debug(caplog):
        tts = make()
        await collect(tts.synthesize("Hello there."))
        fake.fail_next("websocket", Failure("status", status=503, message=FAKE_API_KEY))
        await collect(make().synthesize("Hello there."))
    # (`Bearer` itself may be masked too, by the service's own log redaction when an app was
    # set up earlier in the process.)
    assert re.search(r"> Authorization: (Bearer|\[REDACTED\]) \*\*\*", caplog.text)
    assert_key_never_logged(caplog)
