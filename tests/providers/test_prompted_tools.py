"""History flattening and JSON tool calls for local models without native tool support."""

from __future__ import annotations

from providers.base import ToolSpec
from providers.llm.prompted_tools import ToolReplyParser, plain_chat

TOOLS = [ToolSpec("end_call", "Hang up", {"type": "object", "properties": {}}),
         ToolSpec("book", "Book a slot", {"type": "object",
                                         "properties": {"day": {"type": "string"}}})]

HISTORY = [
    {"role": "system", "content": "You are a receptionist."},
    {"role": "user", "content": "Book me for Monday."},
    {"role": "assistant", "content": "Sure.",
     "tool_calls": [{"id": "c1", "name": "book", "arguments": {"day": "Monday"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "booked 10:00"},
    {"role": "user", "content": "Thanks!"},
    {"role": "system", "content": "The caller sounds happy."},
]


def test_history_without_tools_keeps_plain_turns() -> None:
    chat = plain_chat(HISTORY, None)
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user"]
    assert chat[0]["content"] == "You are a receptionist.\n\nThe caller sounds happy."
    assert chat[2]["content"] == "Sure."  # the tool call is not shown to a tool-less model
    # The tool result becomes user-side context, merged with the next user turn.
    assert chat[3]["content"] == "[result of book] booked 10:00\nThanks!"


def test_history_with_tools_describes_them_and_shows_calls_as_json() -> None:
    chat = plain_chat(HISTORY, TOOLS)
    assert "- end_call: Hang up" in chat[0]["content"]
    assert '"day":{"type":"string"}' in chat[0]["content"]
    assert chat[2]["content"] == 'Sure.\n{"tool": "book", "arguments": {"day": "Monday"}}'


def feed_all(parser: ToolReplyParser, parts: list[str]) -> str:
    return "".join(parser.feed(p) for p in parts)


def test_plain_text_streams_through() -> None:
    p = ToolReplyParser(TOOLS)
    assert feed_all(p, ["  We", " open", " at nine."]) == "  We open at nine."
    assert p.finish() is None


def test_json_reply_becomes_a_tool_call_and_is_never_spoken() -> None:
    p = ToolReplyParser(TOOLS)
    spoken = feed_all(p, ['{"to', 'ol": "book", "argu', 'ments": {"day": "Friday"}}'])
    call = p.finish()
    assert spoken == ""
    assert call is not None and call.name == "book" and call.arguments == {"day": "Friday"}
    assert call.id.startswith("call_")


def test_prose_then_fenced_json_speaks_only_the_prose() -> None:
    p = ToolReplyParser(TOOLS)
    spoken = feed_all(p, ["Goodbye!", " ```", "json\n", '{"name": "end_call"}', "\n```"])
    call = p.finish()
    assert spoken == "Goodbye! "
    assert call is not None and call.name == "end_call" and call.arguments == {}


def test_unknown_or_broken_json_is_dropped() -> None:
    p = ToolReplyParser(TOOLS)
    assert feed_all(p, ['{"tool": "launch_rocket"}']) == ""
    assert p.finish() is None
    p = ToolReplyParser(TOOLS)
    assert feed_all(p, ["{not json"]) == ""
    assert p.finish() is None
