"""LLM `anthropic` against the local Messages API fake."""

from __future__ import annotations

from typing import Any

import pytest

from providers.base import ProviderContext, ProviderError, TextDelta, ToolCall, ToolSpec, Usage
from providers.llm.anthropic import AnthropicLLM, to_anthropic
from tests.fakes.fake_anthropic import FakeAnthropic, Reply, ToolUse
from tests.fakes.harness import all_logs_at_debug, collect, context
from tests.fakes.vendor_base import FAKE_API_KEY, Failure
from tests.providers.cloud_helpers import (
    adapter,
    answers_share_a_connection,
    assert_key_never_logged,
    cancel_promptly,
    vendor_fixtures,
)

TOOLS = [ToolSpec("get_weather", "Weather", {"type": "object",
                                             "properties": {"city": {"type": "string"}}}),
         ToolSpec("get_time", "Time", {"type": "object", "properties": {}})]

server, fake = vendor_fixtures(FakeAnthropic)


def claude(fake: FakeAnthropic, ctx: ProviderContext, **opts: Any) -> AnthropicLLM:
    return adapter(AnthropicLLM, fake.base_url, ctx, **opts)


async def test_text_streams_with_system_prompt_and_usage(fake: FakeAnthropic, cx: Any) -> None:
    ctx, got = cx
    fake.queue_reply("We open at nine tomorrow morning.")
    out = await collect(claude(fake, ctx).stream([
        {"role": "system", "content": "You are a receptionist."},
        {"role": "assistant", "content": "Hello! How can I help?"},  # the agent spoke first
        {"role": "user", "content": "When do you open?"},
    ], settings={"temperature": 0.2}))
    assert "".join(e.text for e in out if isinstance(e, TextDelta)) == \
        "We open at nine tomorrow morning."
    assert sum(isinstance(e, TextDelta) for e in out) > 3
    usage = {u.metric: u.quantity for u in out if isinstance(u, Usage)}
    assert usage["input_tokens"] > 0 and usage["output_tokens"] == 6
    assert got.usage == [] and len(got.ttfb("anthropic")) == 1
    req = fake.requests[-1]
    assert req.headers["x-api-key"] == FAKE_API_KEY
    assert req.headers["anthropic-version"] == "2023-06-01"
    body = req.json
    assert body["system"] == "You are a receptionist."
    assert body["max_tokens"] == 300 and body["temperature"] == 0.2
    # The API needs a user turn first: a placeholder stands in before the greeting.
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]


async def test_turns_reuse_the_vendor_connection(fake: FakeAnthropic, cx: Any) -> None:
    """The stream is read to its end after `message_stop`: no new handshake per answer."""
    await answers_share_a_connection(fake, claude(fake, cx[0]), fake.queue_reply)


async def test_tool_use_blocks_assemble_from_json_deltas(fake: FakeAnthropic, cx: Any) -> None:
    ctx, _ = cx
    fake.queue_reply(Reply("Let me look.", [
        ToolUse("get_weather", {"city": "Lisbon", "days": [1, 2, 3]}, id="toolu_1"),
        ToolUse("get_time", {}, id="toolu_2"),
    ]))
    out = await collect(claude(fake, ctx).stream([{"role": "user", "content": "Weather?"}],
                                                 tools=TOOLS))
    calls = [e for e in out if isinstance(e, ToolCall)]
    assert [(c.id, c.name, c.arguments) for c in calls] == [
        ("toolu_1", "get_weather", {"city": "Lisbon", "days": [1, 2, 3]}),
        ("toolu_2", "get_time", {}),
    ]
    assert fake.requests[-1].json["tools"][0] == {
        "name": "get_weather", "description": "Weather", "input_schema": TOOLS[0].parameters}
    # The history with results goes back in the shape the API validates.
    history = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "toolu_1", "name": "get_weather", "arguments": {"city": "Lisbon"}},
            {"id": "toolu_2", "name": "get_time", "arguments": {}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "10:00"},
    ]
    out = await collect(claude(fake, ctx).stream(history, tools=TOOLS))
    assert any(isinstance(e, TextDelta) for e in out)
    sent = fake.requests[-1].json["messages"]
    assert sent[2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "10:00"}]}


def test_message_conversion_merges_and_orders_blocks() -> None:
    system, msgs = to_anthropic([
        {"role": "system", "content": "A"},
        {"role": "system", "content": "B"},
        {"role": "user", "content": "hi"},
        {"role": "user", "content": "anyone?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "t1", "name": "x", "arguments": {"a": 1}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "done"},
        {"role": "user", "content": "thanks"},
    ], "(call)")
    assert system == "A\n\nB"
    assert msgs == [
        {"role": "user", "content": [{"type": "text", "text": "hi"},
                                     {"type": "text", "text": "anyone?"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "x",
                                           "input": {"a": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                      "content": "done"},
                                     {"type": "text", "text": "thanks"}]},
    ]


async def test_errors_mapped_with_vendor_message(fake: FakeAnthropic, cx: Any) -> None:
    ctx, _ = cx
    # Overloaded (529) is retried before the first byte.
    fake.fail_next("messages", Failure("status", status=529, message="Overloaded"))
    assert await collect(claude(fake, ctx).stream([{"role": "user", "content": "x"}]))
    assert len(fake.for_endpoint("messages")) == 2
    # A 429 with a long Retry-After is not waited out.
    fake.fail_next("messages", Failure("status", status=429, message="Number of request "
                                       "tokens has exceeded your rate limit", retry_after=60))
    with pytest.raises(ProviderError) as exc:
        await collect(claude(fake, ctx).stream([{"role": "user", "content": "x"}]))
    assert exc.value.status == 429 and exc.value.code == "rate_limit_error"
    assert "exceeded your rate limit" in exc.value.message
    # Auth failures: vendor message kept; not retried against the same vendor.
    before = len(fake.requests)
    async with context({"FAKE_VENDOR_KEY": "sk-ant-wrong-0000000"}) as (bad_ctx, _):
        with pytest.raises(ProviderError) as exc:
            await collect(claude(fake, bad_ctx).stream([{"role": "user", "content": "x"}]))
    assert exc.value.status == 401 and exc.value.code == "authentication_error"
    assert "invalid x-api-key" in exc.value.message
    assert len(fake.requests) == before + 1


async def test_in_stream_error_event(fake: FakeAnthropic, cx: Any) -> None:
    ctx, _ = cx
    fake.fail_next("messages", Failure("error_event", after=3, status=529, message="Overloaded"))
    with pytest.raises(ProviderError) as exc:
        await collect(claude(fake, ctx).stream([{"role": "user", "content": "x"}]))
    assert exc.value.code == "overloaded_error" and exc.value.retryable
    fake.fail_next("messages", Failure("error_event", after=2, status=400,
                                       message="prompt is too long"))
    with pytest.raises(ProviderError) as exc:
        await collect(claude(fake, ctx).stream([{"role": "user", "content": "x"}]))
    assert exc.value.code == "invalid_request_error" and not exc.value.retryable


async def test_truncated_stream_and_hang(fake: FakeAnthropic, cx: Any) -> None:
    ctx, _ = cx
    fake.fail_next("messages", Failure("drop", after=4))
    with pytest.raises(ProviderError) as exc:
        await collect(claude(fake, ctx).stream([{"role": "user", "content": "x"}]))
    assert exc.value.retryable
    fake.fail_next("messages", Failure("hang"))
    with pytest.raises(ProviderError) as exc:
        await collect(claude(fake, ctx, read_timeout_s=0.3).stream(
            [{"role": "user", "content": "x"}]))
    assert exc.value.code == "timeout"


async def test_cancel_closes_the_stream_promptly(fake: FakeAnthropic, cx: Any) -> None:
    ctx, _ = cx
    fake.chunk_delay_s = 0.5
    fake.queue_reply("one two three four five six seven eight")
    stream = claude(fake, ctx).stream([{"role": "user", "content": "count"}])
    assert isinstance(await anext(stream), TextDelta)
    rec = await cancel_promptly(fake, stream)
    assert not rec.completed


async def test_api_key_never_reaches_the_logs(fake: FakeAnthropic, cx: Any,
                                              caplog: pytest.LogCaptureFixture) -> None:
    ctx, _ = cx
    with all_logs_at_debug(caplog):
        fake.fail_next("messages", Failure("status", status=500, message=f"oops {FAKE_API_KEY}"))
        await collect(claude(fake, ctx).stream([{"role": "user", "content": "hi"}]))
        fake.fail_next("messages", Failure("status", status=403, message=f"no {FAKE_API_KEY}"))
        with pytest.raises(ProviderError) as exc:
            await collect(claude(fake, ctx).stream([{"role": "user", "content": "hi"}]))
    assert FAKE_API_KEY not in str(exc.value)
    assert_key_never_logged(caplog)


def test_config_requires_a_key() -> None:
    with pytest.raises(ValueError, match="api_key"):
        AnthropicLLM.Config.model_validate({})
