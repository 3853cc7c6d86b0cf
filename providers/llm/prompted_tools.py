"""Chat history and tool calls for small local models without native tool support.

Such models only understand `system/user/assistant` turns. The neutral history (OpenAI chat shape,
see providers/base.py) is flattened into those roles: tool results become user turns marked as
tool output, assistant tool calls become the JSON the model was asked to produce (or disappear
when tools are not offered). Tools, when offered, are described in the system prompt and the
model calls one by replying with a single JSON object, which `ToolReplyParser` turns back into a
ToolCall while ordinary text streams through untouched.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from providers.base import Message, ToolCall, ToolSpec

log = logging.getLogger(__name__)

_INSTRUCTIONS = (
    "You can use the tools below. To use one, reply with only a JSON object of the form "
    '{"tool": "<name>", "arguments": {...}} and nothing else. Otherwise reply normally.\n'
    "Tools:\n"
)


def tools_prompt(tools: list[ToolSpec]) -> str:
    lines = [
        f"- {t.name}: {t.description or 'no description'} "
        f"Arguments (JSON Schema): {json.dumps(t.parameters, separators=(',', ':'))}"
        for t in tools
    ]
    return _INSTRUCTIONS + "\n".join(lines)


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


def plain_chat(messages: list[Message], tools: list[ToolSpec] | None) -> list[dict[str, str]]:
    """The history as role/content turns any chat template accepts.

    One leading system turn (all system text, plus the tool descriptions when tools are offered),
    then user/assistant turns with consecutive same-role turns merged, since many templates
    insist on alternation.
    """
    system: list[str] = []
    turns: list[dict[str, str]] = []
    names: dict[str, str] = {}  # tool_call_id -> tool name, to label results

    def add(role: str, text: str) -> None:
        text = text.strip()
        if not text:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n" + text
        else:
            turns.append({"role": role, "content": text})

    for m in messages:
        role = m.get("role")
        content = _text(m.get("content"))
        if role == "system":
            system.append(content)
        elif role == "user":
            add("user", content)
        elif role == "assistant":
            calls = m.get("tool_calls") or []
            for c in calls:
                names[str(c.get("id", ""))] = str(c.get("name", "tool"))
            if tools and calls:
                content = "\n".join(
                    [content] + [json.dumps({"tool": c.get("name"),
                                             "arguments": c.get("arguments", {})})
                                 for c in calls])
            add("assistant", content)
        elif role == "tool":
            name = names.get(str(m.get("tool_call_id", "")), "tool")
            add("user", f"[result of {name}] {content}")
    if tools:
        system.append(tools_prompt(tools))
    head = "\n\n".join(s.strip() for s in system if s.strip())
    return ([{"role": "system", "content": head}] if head else []) + turns


def _parse_call(text: str, known: set[str]) -> ToolCall | None:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        data = json.loads(text[start:end + 1])
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    name = data.get("tool") or data.get("name") or data.get("function")
    args = data.get("arguments", data.get("parameters", {}))
    if not isinstance(name, str) or name not in known:
        return None
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            args = {}
    if not isinstance(args, dict):
        args = {}
    return ToolCall(id=f"call_{uuid.uuid4().hex[:16]}", name=name, arguments=args)


class ToolReplyParser:
    """Splits a streamed reply into speakable text and, when it contains a JSON tool call, a
    ToolCall. Small models often wrap the JSON in prose or a code fence, so everything from the
    first `{` or backtick on is held back until the end and parsed there; JSON must never reach
    the caller's ear, even when it turns out not to be a valid call."""

    def __init__(self, tools: list[ToolSpec]) -> None:
        self._known = {t.name for t in tools}
        self._held: str | None = None  # None while the reply is still plain text

    def feed(self, text: str) -> str:
        """The part of `text` that can be spoken now."""
        if self._held is not None:
            self._held += text
            return ""
        cut = min((i for i in (text.find("{"), text.find("`")) if i >= 0), default=-1)
        if cut < 0:
            return text
        self._held = text[cut:]
        return text[:cut]

    def finish(self) -> ToolCall | None:
        if self._held is None:
            return None
        call = _parse_call(self._held, self._known)
        if call is None:
            log.warning("local model replied with JSON that is not a known tool call; dropped")
        return call
