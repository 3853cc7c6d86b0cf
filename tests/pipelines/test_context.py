"""ChatContext: OpenAI-shape messages, heard-text truncation, the item cap without orphans."""

from __future__ import annotations

import random

import pytest

from pipelines.context import ChatContext, ToolCallRecord


def test_messages_in_openai_shape() -> None:
    ctx = ChatContext("Be brief.", max_items=10)
    ctx.add_user("Hi")
    ctx.add_assistant("Hello!")
    call = ToolCallRecord("c1", "weather", {"city": "Paris"})
    ctx.add_tool_exchange("Checking.", [call], {"c1": {"temp": 21}})
    ctx.add_tool_exchange("", [ToolCallRecord("c2", "time")], {"c2": "10:00"})
    assert ctx.messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "assistant", "content": "Checking.",
         "tool_calls": [{"id": "c1", "name": "weather", "arguments": {"city": "Paris"}}]},
        {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "c1", "name": "weather"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"id": "c2", "name": "time", "arguments": {}}]},
        {"role": "tool", "content": "10:00", "tool_call_id": "c2", "name": "time"},
    ]
    assert len(ctx) == 7


def test_consecutive_user_turns_merge() -> None:
    ctx = ChatContext("sys")
    ctx.add_user("I want to book")
    ctx.add_user("a table for two")
    assert ctx.messages()[1:] == [{"role": "user", "content": "I want to book a table for two"}]


def test_assistant_truncated_to_heard_text() -> None:
    ctx = ChatContext("sys")
    item = ctx.add_assistant("We open at nine. We close at ten.")
    ctx.truncate_to_heard(item, "We open at nine.")
    assert ctx.messages()[-1] == {"role": "assistant", "content": "We open at nine."}
    assert item.interrupted and item.generated == "We open at nine. We close at ten."
    # Heard nothing at all: the message disappears (the caller never heard it) ...
    gone = ctx.add_assistant("Unheard words.")
    ctx.truncate_to_heard(gone, "")
    assert gone not in ctx.items
    # ... unless it carries tool calls, which happened regardless.
    tc = ctx.add_tool_exchange("Let me look.", [ToolCallRecord("t", "f")], {"t": "ok"})
    ctx.truncate_to_heard(tc, "")
    assert tc in ctx.items and tc.content == ""
    with pytest.raises(ValueError, match="only assistant"):
        ctx.truncate_to_heard(next(i for i in ctx.items if i.role == "tool"), "")


def test_tool_exchange_requires_a_result_per_call() -> None:
    ctx = ChatContext("sys")
    with pytest.raises(ValueError, match="no result"):
        ctx.add_tool_exchange("", [ToolCallRecord("a", "f"), ToolCallRecord("b", "g")],
                              {"a": 1})
    with pytest.raises(ValueError):
        ctx.add_tool_exchange("", [], {})
    assert ctx.items == ()


def test_inject_roles() -> None:
    ctx = ChatContext("sys")
    ctx.inject("Caller is a VIP.")
    ctx.inject("extra", role="user")
    assert [m["role"] for m in ctx.messages()] == ["system", "system", "user"]


def test_cap_keeps_system_prompt_and_most_recent_items() -> None:
    ctx = ChatContext("sys", max_items=4)
    for i in range(5):
        ctx.add_user(f"q{i}")
        ctx.add_assistant(f"a{i}")
    msgs = ctx.messages()
    assert msgs == [
        {"role": "system", "content": "sys"},
        {"role": "assistant", "content": "a3"},
        {"role": "user", "content": "q4"},
        {"role": "assistant", "content": "a4"},
    ]


def test_cap_never_splits_a_tool_exchange() -> None:
    ctx = ChatContext("sys", max_items=5)
    ctx.add_user("q")
    calls = [ToolCallRecord(f"c{i}", "f") for i in range(3)]
    ctx.add_tool_exchange("", calls, {c.id: i for i, c in enumerate(calls)})  # 4 items
    # 1 + 1 + 4 = 6 > 5: the user message goes; the exchange stays whole.
    assert [m["role"] for m in ctx.messages()] == ["system", "assistant", "tool", "tool", "tool"]
    ctx.add_assistant("done")
    # The exchange can only go as a unit.
    assert [m["role"] for m in ctx.messages()] == ["system", "assistant"]
    # A unit larger than the cap alone is kept rather than split.
    big = [ToolCallRecord(f"b{i}", "f") for i in range(6)]
    ctx.add_tool_exchange("", big, {c.id: 0 for c in big})
    roles = [m["role"] for m in ctx.messages()]
    assert roles == ["system", "assistant"] + ["tool"] * 6


def _check_invariants(ctx: ChatContext) -> None:
    msgs = ctx.messages()
    assert msgs[0] == {"role": "system", "content": "sys"}
    open_calls: set[str] = set()
    for m in msgs[1:]:
        if m["role"] == "tool":
            assert m["tool_call_id"] in open_calls, "tool result without its call"
            open_calls.discard(m["tool_call_id"])
        else:
            assert not open_calls, "tool call without its result"
            if m["role"] == "assistant" and m.get("tool_calls"):
                open_calls = {c["id"] for c in m["tool_calls"]}
    assert not open_calls


def test_cap_invariants_hold_under_random_histories() -> None:
    rng = random.Random(7)
    for cap in (4, 5, 7, 12):
        ctx = ChatContext("sys", max_items=cap)
        n = 0
        for _ in range(300):
            r = rng.random()
            if r < 0.35:
                ctx.add_user(f"u{n}")
            elif r < 0.7:
                ctx.add_assistant(f"a{n}")
            elif r < 0.8:
                ctx.inject(f"i{n}")
            else:
                k = rng.randint(1, 3)
                calls = [ToolCallRecord(f"c{n}-{j}", "f") for j in range(k)]
                ctx.add_tool_exchange("", calls, {c.id: j for j, c in enumerate(calls)})
            n += 1
            _check_invariants(ctx)
            assert len(ctx) <= max(cap, 1 + 4)  # only a lone oversized exchange may exceed
