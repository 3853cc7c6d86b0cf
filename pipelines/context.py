"""The chat context of one call: what the LLM sees on its next request.

Items are system / user / assistant / tool messages rendered in the neutral OpenAI chat shape
(see providers/base.py `Message`). Two things make this more than a list:

- Assistant text is what the caller actually HEARD. The conversation adds an assistant item with
  the full generated text and truncates it (`truncate_to_heard`) when the caller barges in, so the
  model never believes it said something the caller never heard.
- The context is capped at `max_items` messages (system prompt included) so a long call cannot
  grow memory or prompt size without bound. Old messages are dropped whole "exchanges" at a time:
  an assistant message carrying tool calls and the tool results answering it form one unit, so a
  tool result is never kept without the call it answers (and vice versa) — providers reject
  such orphans. The system prompt is always kept.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]

_ids = itertools.count(1)


@dataclass(slots=True)
class ToolCallRecord:
    id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": dict(self.arguments)}


@dataclass(slots=True)
class ChatItem:
    role: Role
    content: str
    tool_calls: list[ToolCallRecord] | None = None  # assistant only
    tool_call_id: str | None = None  # tool only
    name: str | None = None  # tool only: the function's name
    # Assistant items: the text as generated, kept when `content` is truncated to what was heard.
    generated: str | None = None
    interrupted: bool = False
    id: int = field(default_factory=lambda: next(_ids))

    def to_message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            msg["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        if self.role == "tool":
            msg["tool_call_id"] = self.tool_call_id
            if self.name:
                msg["name"] = self.name
        return msg


def result_text(result: Any) -> str:
    """A tool result as message content: strings verbatim, anything else as JSON."""
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(result)


@dataclass(frozen=True, slots=True)
class ContextCheckpoint:
    items: list[ChatItem]
    last: ChatItem | None
    last_content: str


class ChatContext:
    def __init__(self, system_prompt: str, max_items: int = 50) -> None:
        if max_items < 2:
            raise ValueError("max_items must leave room for the system prompt and one message")
        self.system_prompt = system_prompt
        self.max_items = max_items
        self._items: list[ChatItem] = []

    # -- reading ------------------------------------------------------------------------------
    @property
    def items(self) -> tuple[ChatItem, ...]:
        return tuple(self._items)

    def __len__(self) -> int:
        """Messages the LLM will see, system prompt included."""
        return len(self._items) + (1 if self.system_prompt else 0)

    def messages(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.system_prompt:
            out.append({"role": "system", "content": self.system_prompt})
        out.extend(item.to_message() for item in self._items)
        return out

    # -- writing ------------------------------------------------------------------------------
    def add_user(self, text: str) -> ChatItem:
        """Add what the caller said. Consecutive user turns (the agent's answer to the first was
        never heard) merge into one message: the model sees one coherent request."""
        text = text.strip()
        if self._items and self._items[-1].role == "user":
            last = self._items[-1]
            last.content = f"{last.content} {text}".strip()
            return last
        return self._append(ChatItem("user", text))

    def add_assistant(self, text: str, *, interrupted: bool = False) -> ChatItem:
        item = ChatItem("assistant", text, generated=text, interrupted=interrupted)
        return self._append(item)

    def add_tool_exchange(
        self,
        text: str,
        calls: Sequence[ToolCallRecord],
        results: dict[str, Any],
    ) -> ChatItem:
        """Add an assistant message with tool calls and one result per call, as one unit.

        `results` maps call id → result; a call without a result is an error (it would leave the
        provider with an unanswered tool call).
        """
        if not calls:
            raise ValueError("a tool exchange needs at least one call")
        missing = [c.id for c in calls if c.id not in results]
        if missing:
            raise ValueError(f"no result for tool call(s) {missing}")
        assistant = ChatItem("assistant", text, tool_calls=list(calls), generated=text)
        self._items.append(assistant)
        for c in calls:
            self._items.append(
                ChatItem("tool", result_text(results[c.id]), tool_call_id=c.id, name=c.name)
            )
        self._enforce_cap()
        return assistant

    def inject(
        self, text: str, role: Literal["system", "user", "assistant"] = "system"
    ) -> ChatItem:
        """Add context for the next turn without triggering a response (e.g. CRM data)."""
        if role == "user":
            return self.add_user(text)
        return self._append(ChatItem(role, text))

    def truncate_to_heard(self, item: ChatItem, heard: str) -> None:
        """The caller heard only `heard` of this assistant item (a barge-in cut it off).

        An item the caller heard nothing of is removed, unless it carries tool calls (those
        happened regardless of what was heard and their results depend on them).
        """
        if item.role != "assistant":
            raise ValueError("only assistant items are truncated to what was heard")
        heard = heard.strip()
        if item.generated is None:
            item.generated = item.content
        if heard == item.content.strip():
            return
        item.content = heard
        item.interrupted = True
        if not heard and not item.tool_calls and item in self._items:
            self._items.remove(item)

    def clear(self) -> None:
        self._items.clear()

    def checkpoint(self) -> ContextCheckpoint:
        """Where the context stands now, for `rollback` (an answer started early on a turn
        that then went on: everything it added must go)."""
        last = self._items[-1] if self._items else None
        return ContextCheckpoint(list(self._items), last, last.content if last else "")

    def rollback(self, cp: ContextCheckpoint) -> None:
        self._items = list(cp.items)
        if cp.last is not None:
            cp.last.content = cp.last_content  # add_user may have merged into it

    # -- cap ----------------------------------------------------------------------------------
    def _append(self, item: ChatItem) -> ChatItem:
        self._items.append(item)
        self._enforce_cap()
        return item

    def _units(self) -> list[list[ChatItem]]:
        """Items grouped so a tool-calling assistant message and its results stay together."""
        units: list[list[ChatItem]] = []
        for item in self._items:
            if item.role == "tool" and units and _answers(units[-1], item):
                units[-1].append(item)
            else:
                units.append([item])
        return units

    def _enforce_cap(self) -> None:
        budget = self.max_items - (1 if self.system_prompt else 0)
        if len(self._items) <= budget:
            return
        units = self._units()
        count = len(self._items)
        # Drop the oldest units; the newest unit always stays, even when it alone exceeds the
        # cap (a reply with many tool calls), because splitting it would orphan tool items.
        while count > budget and len(units) > 1:
            count -= len(units.pop(0))
        # Never start the history with tool results whose call was dropped (cannot happen with
        # whole units, kept as a guard against items added out of order).
        while len(units) > 1 and units[0][0].role == "tool":
            count -= len(units.pop(0))
        self._items = [item for unit in units for item in unit]


def _answers(unit: list[ChatItem], tool_item: ChatItem) -> bool:
    head = unit[0]
    return bool(
        head.role == "assistant"
        and head.tool_calls
        and any(c.id == tool_item.tool_call_id for c in head.tool_calls)
    )
