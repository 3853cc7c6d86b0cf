"""OpenAI adapters (LLM `openai`, STT `openai`, TTS `openai`) against the local OpenAI fake."""

from __future__ import annotations

import asyncio
import io
import json
import time
import wave
from typing import Any

import numpy as np
import pytest

from providers.base import ProviderContext, ProviderError, TextDelta, ToolCall, ToolSpec, Usage
from providers.llm.openai import OpenAILLM
from providers.stt.openai import OpenAISTT
from providers.tts.openai import OpenAITTS
from tests.fakes.fake_openai import ChatReply, FakeOpenAI, FakeToolCall
from tests.fakes.harness import KEY_REF, all_logs_at_debug, collect, context
from tests.fakes.vendor_base import FAKE_API_KEY, Failure, tone
from tests.providers.cloud_helpers import (
    adapter,
    answers_share_a_connection,
    assert_key_never_logged,
    cancel_promptly,
    vendor_fixtures,
)

TOOLS = [
    ToolSpec("get_weather", "Weather for a city",
             {"type": "object", "properties": {"city": {"type": "string"}}}),
    ToolSpec("book_table", "Book a table",
             {"type": "object", "properties": {"people": {"type": "integer"}}}),
]

server, fake = vendor_fixtures(FakeOpenAI, interleave_tool_calls=False)


def llm(fake: FakeOpenAI, ctx: ProviderContext, **opts: Any) -> OpenAILLM:
    return adapter(OpenAILLM, fake.base_url, ctx, **opts)


# ---------------------------------------------------------------------------------------------
# LLM
# ---------------------------------------------------------------------------------------------


async def test_text_streams_in_order_with_usage_and_ttfb(fake: FakeOpenAI, cx: Any) -> None:
    ctx, got = cx
    fake.queue_chat("The shop opens at nine and closes at five.")
    out = await collect(llm(fake, ctx, temperature=0.3).stream(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hours?"}]))
    text = [e for e in out if isinstance(e, TextDelta)]
    assert len(text) > 3
    assert "".join(t.text for t in text) == "The shop opens at nine and closes at five."
    usage = {u.metric: u.quantity for u in out if isinstance(u, Usage)}
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert isinstance(out[-1], Usage)  # usage comes last
    assert got.usage == []  # LLM usage is yielded, not also reported (no double counting)
    assert len(got.ttfb("openai")) == 1
    req = fake.requests[-1]
    assert req.headers["authorization"] == f"Bearer {FAKE_API_KEY}"
    body = req.json
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["model"] == "gpt-4o-mini" and body["temperature"] == 0.3
    # A compatible server gets `max_tokens`; OpenAI itself gets `max_completion_tokens`.
    assert body["max_tokens"] == 300 and "max_completion_tokens" not in body


async def test_turns_reuse_the_vendor_connection(fake: FakeOpenAI, cx: Any) -> None:
    """The stream is read to its end after `[DONE]`: no new TCP and TLS handshake per answer."""
    await answers_share_a_connection(fake, llm(fake, cx[0]), fake.queue_chat)


async def test_parallel_tool_calls_assemble_per_index(fake: FakeOpenAI, cx: Any) -> None:
    ctx, _ = cx
    fake.interleave_tool_calls = True  # fragments of both calls alternate on the wire
    fake.queue_chat(ChatReply("One moment.", [
        FakeToolCall("get_weather", {"city": "Paris", "units": "metric", "days": [1, 2]},
                     id="call_a"),
        FakeToolCall("book_table", {"people": 4, "note": "window seat, please"}, id="call_b"),
    ]))
    out = await collect(llm(fake, ctx).stream([{"role": "user", "content": "Plan my evening"}],
                                              tools=TOOLS))
    calls = [e for e in out if isinstance(e, ToolCall)]
    assert [(c.id, c.name, c.arguments) for c in calls] == [
        ("call_a", "get_weather", {"city": "Paris", "units": "metric", "days": [1, 2]}),
        ("call_b", "book_table", {"people": 4, "note": "window seat, please"}),
    ]
    # Tool calls follow the text and precede usage.
    kinds = [e.kind for e in out]
    assert kinds.index("tool_call") > kinds.index("text")
    assert kinds.index("usage") > kinds.index("tool_call")
    assert fake.requests[-1].json["tools"][0] == {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather for a city",
                     "parameters": TOOLS[0].parameters}}


async def test_tool_round_trip_messages_are_accepted(fake: FakeOpenAI, cx: Any) -> None:
    """Our neutral tool-call history converts to what the API validates."""
    ctx, _ = cx
    history = [
        {"role": "system", "content": "You book tables."},
        {"role": "user", "content": "Table for 4"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "name": "book_table", "arguments": {"people": 4}},
            {"id": "call_2", "name": "get_weather", "arguments": {"city": "Oslo"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": {"ok": True}},
        {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
    ]
    out = await collect(llm(fake, ctx).stream(history, tools=TOOLS))
    assert any(isinstance(e, TextDelta) for e in out)
    sent = fake.requests[-1].json["messages"]
    assert sent[2]["tool_calls"][0] == {"id": "call_1", "type": "function", "function": {
        "name": "book_table", "arguments": json.dumps({"people": 4})}}
    assert sent[2]["content"] is None
    assert sent[3] == {"role": "tool", "tool_call_id": "call_1", "content": '{"ok": true}'}


async def test_azure_deployment_url_and_api_key_header(fake: FakeOpenAI, cx: Any) -> None:
    ctx, _ = cx
    model = OpenAILLM(OpenAILLM.Config.model_validate({
        "api_key": KEY_REF,
        "azure": {"endpoint": fake.azure_endpoint, "deployment": "gpt4o-prod",
                  "api_version": "2024-10-21"},
    }), ctx)
    out = await collect(model.stream([{"role": "user", "content": "hi"}]))
    assert any(isinstance(e, TextDelta) for e in out)
    req = fake.requests[-1]
    assert req.path == "/openai/deployments/gpt4o-prod/chat/completions"
    assert req.q("api-version") == "2024-10-21"
    assert req.headers["api-key"] == FAKE_API_KEY and "authorization" not in req.headers
    assert "model" not in req.json and req.json["max_completion_tokens"] == 300


async def test_retry_after_is_respected_before_the_first_byte(fake: FakeOpenAI, cx: Any) -> None:
    ctx, _ = cx
    fake.fail_next("chat", Failure("status", status=429, message="Rate limit reached",
                                   retry_after=0.3))
    out = await collect(llm(fake, ctx).stream([{"role": "user", "content": "hi"}]))
    assert any(isinstance(e, TextDelta) for e in out)
    first, second = fake.for_endpoint("chat")
    assert second.started_at - first.started_at >= 0.3


async def test_long_retry_after_fails_over_at_once(fake: FakeOpenAI, cx: Any) -> None:
    ctx, _ = cx
    fake.fail_next("chat", Failure("status", status=429, message="Rate limit reached",
                                   retry_after=30))
    with pytest.raises(ProviderError) as exc:
        await collect(llm(fake, ctx).stream([{"role": "user", "content": "hi"}]))
    assert exc.value.status == 429 and exc.value.retryable
    assert "Rate limit reached" in exc.value.message
    assert exc.value.code == "rate_limit_exceeded"
    assert len(fake.for_endpoint("chat")) == 1


async def test_5xx_retried_then_mapped(fake: FakeOpenAI, cx: Any) -> None:
    ctx, _ = cx
    fake.fail_always("chat", Failure("status", status=503, message="Service unavailable."))
    with pytest.raises(ProviderError) as exc:
        await collect(llm(fake, ctx, max_retries=2).stream([{"role": "user", "content": "x"}]))
    assert exc.value.status == 503 and exc.value.retryable
    assert "Service unavailable." in str(exc.value)
    assert len(fake.for_endpoint("chat")) == 3


async def test_auth_and_request_errors_are_not_retried(fake: FakeOpenAI, cx: Any) -> None:
    ctx, _ = cx
    async with context({"FAKE_VENDOR_KEY": "sk-wrong-key-000000"}) as (bad_ctx, _):
        with pytest.raises(ProviderError) as exc:
            await collect(llm(fake, bad_ctx).stream([{"role": "user", "content": "x"}]))
    assert exc.value.status == 401 and exc.value.code == "invalid_api_key"
    assert "Incorrect API key provided" in exc.value.message
    # Another provider (with its own key) may well work, so the fallback may switch.
    assert exc.value.retryable
    with pytest.raises(ProviderError) as exc:
        await collect(llm(fake, ctx).stream([{"role": "tool", "tool_call_id": "nope",
                                              "content": "x"}]))
    assert exc.value.status == 400 and not exc.value.retryable
    assert "must be a response to a preceeding message with 'tool_calls'" in exc.value.message
    assert len(fake.for_endpoint("chat")) == 2  # one attempt each


async def test_hang_times_out(fake: FakeOpenAI, cx: Any) -> None:
    ctx, _ = cx
    fake.fail_next("chat", Failure("hang"))
    t0 = time.monotonic()
    with pytest.raises(ProviderError) as exc:
        await collect(llm(fake, ctx, read_timeout_s=0.3).stream([{"role": "user", "content": "x"}]))
    assert exc.value.code == "timeout" and exc.value.retryable
    assert time.monotonic() - t0 < 3  # not retried: the fallback takes it from here
    await fake.until(lambda: fake.requests[-1].closed_at is not None)


async def test_mid_stream_drop_and_error_event(fake: FakeOpenAI, cx: Any) -> None:
    ctx, _ = cx
    fake.fail_next("chat", Failure("drop", after=3))
    seen: list[Any] = []
    with pytest.raises(ProviderError) as exc:
        async for e in llm(fake, ctx).stream([{"role": "user", "content": "x"}]):
            seen.append(e)
    assert exc.value.retryable and seen  # some text arrived before the drop
    fake.fail_next("chat", Failure("error_event", after=2, status=500,
                                   message="The model produced invalid content."))
    with pytest.raises(ProviderError) as exc:
        await collect(llm(fake, ctx).stream([{"role": "user", "content": "x"}]))
    assert "The model produced invalid content." in exc.value.message


async def test_cancel_closes_the_http_stream_promptly(fake: FakeOpenAI, cx: Any) -> None:
    ctx, _ = cx
    fake.chunk_delay_s = 0.5  # left alone, the answer would take seconds
    fake.queue_chat("one two three four five six seven eight nine ten")
    stream = llm(fake, ctx).stream([{"role": "user", "content": "count"}])
    first = await anext(stream)
    assert isinstance(first, TextDelta)
    rec = await cancel_promptly(fake, stream)  # barge-in
    assert not rec.completed


async def test_cancel_by_task_cancellation(fake: FakeOpenAI, cx: Any) -> None:
    ctx, _ = cx
    fake.chunk_delay_s = 0.5
    fake.queue_chat("one two three four five six")
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in llm(fake, ctx).stream([{"role": "user", "content": "count"}]):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    await cancel_promptly(fake, task)


def test_config_rules() -> None:
    with pytest.raises(ValueError, match="api_key is required"):
        OpenAILLM.Config.model_validate({})
    local = OpenAILLM.Config.model_validate({"base_url": "http://127.0.0.1:11434/v1"})
    assert local.api_key is None  # Ollama / vLLM / llama.cpp need none
    with pytest.raises(ValueError):
        OpenAILLM.Config.model_validate({"api_key": KEY_REF, "temprature": 0.1})


# ---------------------------------------------------------------------------------------------
# STT (batch transcription)
# ---------------------------------------------------------------------------------------------


def stt(fake: FakeOpenAI, ctx: ProviderContext, **opts: Any) -> OpenAISTT:
    return adapter(OpenAISTT, fake.base_url, ctx, **opts)


async def push_audio(stream: Any, audio: np.ndarray) -> None:
    for i in range(0, audio.size, 320):
        await stream.push(audio[i:i + 320])


async def test_stt_uploads_the_turn_as_wav_on_flush(fake: FakeOpenAI, cx: Any) -> None:
    ctx, got = cx
    fake.queue_transcript("what are your opening hours")
    s = await stt(fake, ctx, prompt="Opening hours, bookings.").open(16000, "en-US")
    speech = tone(16000, 16000)
    await push_audio(s, speech)
    assert fake.for_endpoint("transcriptions") == []  # nothing is sent before the turn ends
    await s.flush()
    events = s.events()
    tr = await asyncio.wait_for(anext(events), 5)
    assert (tr.text, tr.is_final, tr.start_ms, tr.end_ms) == (
        "what are your opening hours", True, 0, 1000)
    form = fake.for_endpoint("transcriptions")[0].form
    assert form["model"] == "gpt-4o-mini-transcribe" and form["language"] == "en"
    assert form["prompt"] == "Opening hours, bookings."
    filename, wav_data, ctype = form["file"]
    assert filename.endswith(".wav") and ctype == "audio/wav"
    with wave.open(io.BytesIO(wav_data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        assert np.array_equal(np.frombuffer(w.readframes(w.getnframes()), "<i2"), speech)
    # An empty turn yields an empty final without any upload.
    await s.flush()
    tr = await asyncio.wait_for(anext(events), 5)
    assert tr.text == "" and tr.is_final
    assert len(fake.for_endpoint("transcriptions")) == 1
    await s.aclose()
    assert got.total("audio_seconds") == pytest.approx(1.0)
    assert len(got.ttfb("openai")) == 1


async def test_stt_buffer_is_bounded_to_the_latest_audio(fake: FakeOpenAI, cx: Any) -> None:
    ctx, _ = cx
    s = await stt(fake, ctx, max_buffer_s=1).open(16000, "en")
    await push_audio(s, tone(48000, 16000))
    await s.flush()
    await asyncio.wait_for(anext(s.events()), 5)
    with wave.open(io.BytesIO(fake.for_endpoint("transcriptions")[0].form["file"][1])) as w:
        frames = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert frames.size == 16000
    assert np.array_equal(frames, tone(48000, 16000)[-16000:])
    await s.aclose()


async def test_stt_errors_surface_on_events(fake: FakeOpenAI, cx: Any) -> None:
    ctx, _ = cx
    fake.fail_next("transcriptions", Failure("status", status=400, message="Audio too short."))
    s = await stt(fake, ctx).open(16000, "en")
    await push_audio(s, tone(8000, 16000))
    await s.flush()
    with pytest.raises(ProviderError) as exc:
        await asyncio.wait_for(anext(s.events()), 5)
    assert exc.value.status == 400 and "Audio too short." in exc.value.message
    await s.aclose()


async def test_stt_keyless_compatible_server() -> None:
    with FakeOpenAI(api_key=None) as local:  # type: ignore[arg-type]
        async with context() as (ctx, _):
            s = await OpenAISTT(OpenAISTT.Config.model_validate(
                {"base_url": local.base_url, "model": "Systran/faster-whisper-small"}),
                ctx).open(8000, "de-DE")
            await push_audio(s, tone(8000, 8000))
            await s.flush()
            tr = await asyncio.wait_for(anext(s.events()), 5)
            assert tr.text == "hello world"
            rec = local.requests[-1]
            assert "authorization" not in rec.headers and rec.form["language"] == "de"
            await s.aclose()


# ---------------------------------------------------------------------------------------------
# TTS
# ---------------------------------------------------------------------------------------------


def tts(fake: FakeOpenAI, ctx: ProviderContext, **opts: Any) -> OpenAITTS:
    return adapter(OpenAITTS, fake.base_url, ctx, **opts)


async def test_tts_streams_pcm_in_order(fake: FakeOpenAI, cx: Any) -> None:
    ctx, got = cx
    text = "Thanks for calling, how can I help?"
    chunks = await collect(tts(fake, ctx, speed=1.1).synthesize(text, voice="nova"))
    assert len(chunks) > 2
    assert all(c.sample_rate == 24000 and c.encoding == "pcm16" for c in chunks)
    # The fake splits the body at odd byte offsets: the samples must still line up exactly.
    assert np.array_equal(np.concatenate([c.samples for c in chunks]), fake.speech_audio(text))
    body = fake.requests[-1].json
    assert body == {"model": "gpt-4o-mini-tts", "input": text, "voice": "nova",
                    "response_format": "pcm", "speed": 1.1}
    assert got.total("characters") == len(text) and len(got.ttfb("openai")) == 1


async def test_tts_cancel_and_errors(fake: FakeOpenAI, cx: Any) -> None:
    ctx, _ = cx
    fake.chunk_delay_s = 0.5
    gen = tts(fake, ctx).synthesize("A long sentence that takes a while to say out loud.")
    await anext(gen)
    rec = await cancel_promptly(fake, gen)
    assert not rec.completed
    fake.chunk_delay_s = 0.0
    fake.fail_next("speech", Failure("status", status=500, message="Speech backend down."))
    chunks = await collect(tts(fake, ctx).synthesize("Retried fine."))  # 500 is retried
    assert chunks and len(fake.for_endpoint("speech")) == 3


# ---------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------


async def test_api_key_never_reaches_the_logs(fake: FakeOpenAI, cx: Any,
                                              caplog: pytest.LogCaptureFixture) -> None:
    ctx, _ = cx
    with all_logs_at_debug(caplog):
        fake.fail_next("chat", Failure("status", status=500))
        await collect(llm(fake, ctx).stream([{"role": "user", "content": "hi"}]))
        s = await stt(fake, ctx).open(16000, "en")
        await push_audio(s, tone(3200, 16000))
        await s.flush()
        await asyncio.wait_for(anext(s.events()), 5)
        await s.aclose()
        await collect(tts(fake, ctx).synthesize("Hello."))
        fake.fail_next("chat", Failure("status", status=401, message=f"bad key {FAKE_API_KEY}"))
        with pytest.raises(ProviderError) as exc:
            await collect(llm(fake, ctx).stream([{"role": "user", "content": "hi"}]))
    assert FAKE_API_KEY not in str(exc.value) and FAKE_API_KEY not in repr(exc.value)
    assert_key_never_logged(caplog)
