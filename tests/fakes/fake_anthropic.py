"""A local fake of Anthropic's Messages API (`POST /v1/messages`, endpoint name "messages").

Streams the real event sequence: `message_start` (usage.input_tokens) → per block
`content_block_start` / `content_block_delta` (`text_delta`, or `input_json_delta` pieces for a
`tool_use` block) / `content_block_stop` → `message_delta` (stop_reason, usage.output_tokens) →
`message_stop`, with a `ping` after the first block start. Checks what the real API checks:
`x-api-key`, `anthropic-version`, `max_tokens`, a first turn from the user, non-empty text blocks,
and every `tool_result` answering a `tool_use` of the preceding assistant turn. Errors use
`{"type": "error", "error": {"type", "message"}}`, over HTTP or as an in-stream `error` event.

`base_url` is http://127.0.0.1:PORT (the adapter appends /v1/messages). Script replies with
`queue_reply(Reply(text=..., tool_uses=[ToolUse(name, input)]))`.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.vendor_base import (
    DropConnection,
    Failure,
    HttpExchange,
    HttpVendor,
)

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}


@dataclass
class ToolUse:
    name: str
    input: dict[str, Any]
    id: str | None = None


@dataclass
class Reply:
    text: str = ""
    tool_uses: list[ToolUse] = field(default_factory=list)


def _error(type_: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}}


def _status_error(f: Failure) -> dict[str, Any]:
    return _error(_ERROR_TYPES.get(f.status, "api_error"), f.message)


class _BadRequest(Exception):
    pass


class FakeAnthropic(HttpVendor):
    thread_name = "fake-anthropic"

    def __init__(self, *, default_reply: str = "Hello from the fake Claude.",
                 json_fragment_chars: int = 6, **kw: Any) -> None:
        super().__init__(**kw)
        self.default_reply = default_reply
        self.json_fragment_chars = json_fragment_chars
        self.replies: deque[Reply] = deque()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        super().reset()
        self.replies.clear()

    def queue_reply(self, *replies: Reply | str) -> None:
        for r in replies:
            self.replies.append(Reply(text=r) if isinstance(r, str) else r)

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        rec = await self._record_http("messages", scope, receive)
        headers = rec.headers
        ex = HttpExchange(scope, receive, send, rec)
        if scope["path"] != "/v1/messages" or scope["method"] != "POST":
            await ex.json_response(404, _error("not_found_error", "Not Found"))
            return
        if not self.key_ok(headers.get("x-api-key")):
            await ex.json_response(401, _error("authentication_error", "invalid x-api-key"))
            return
        if not headers.get("anthropic-version"):
            await ex.json_response(400, _error("invalid_request_error",
                                               "anthropic-version: header is required"))
            return
        failure = self.failures.take("messages")
        if await ex.scripted(failure, _status_error):
            return
        try:
            body = json.loads(rec.body)
            rec.json = body
            self._validate(body)
        except ValueError:
            await ex.json_response(400, _error("invalid_request_error", "invalid JSON body"))
            return
        except _BadRequest as exc:
            await ex.json_response(400, _error("invalid_request_error", str(exc)))
            return
        reply = self.replies.popleft() if self.replies else Reply(self.default_reply)
        input_tokens = max(1, len(json.dumps(body.get("messages"))) // 4
                           + len(body.get("system") or "") // 4)
        await ex.stream(200, {"content-type": "text/event-stream"},
                        self._events(reply, body["model"], input_tokens, failure))

    @staticmethod
    def _validate(body: Any) -> None:
        if not isinstance(body, dict):
            raise _BadRequest("body must be an object")
        for name in ("model", "max_tokens", "messages"):
            if name not in body:
                raise _BadRequest(f"{name}: Field required")
        if body.get("stream") is not True:
            raise _BadRequest("this fake only serves stream=true")
        msgs = body["messages"]
        if not msgs:
            raise _BadRequest("messages: at least one message is required")
        if msgs[0].get("role") != "user":
            raise _BadRequest('messages: first message must use the "user" role')
        prev_tool_ids: set[str] = set()
        for i, m in enumerate(msgs):
            if m.get("role") not in ("user", "assistant"):
                raise _BadRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")
            content = m.get("content")
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
            if not blocks:
                raise _BadRequest(f"messages.{i}: all messages must have non-empty content")
            tool_ids: set[str] = set()
            for b in blocks:
                if b.get("type") == "text" and not b.get("text", "").strip():
                    raise _BadRequest(f"messages.{i}: text content blocks must be non-empty")
                if b.get("type") == "tool_use":
                    if m["role"] != "assistant" or not isinstance(b.get("input"), dict):
                        raise _BadRequest(f"messages.{i}: invalid tool_use block")
                    tool_ids.add(b["id"])
                if b.get("type") == "tool_result" and b.get("tool_use_id") not in prev_tool_ids:
                    raise _BadRequest(
                        f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` "
                        "blocks. Each `tool_result` block must have a corresponding `tool_use` "
                        "block in the previous message.")
            prev_tool_ids = tool_ids
        for t in body.get("tools") or ():
            if not t.get("name") or not isinstance(t.get("input_schema"), dict):
                raise _BadRequest("tools: each tool needs name and input_schema")

    def _payloads(self, reply: Reply, model: str, input_tokens: int
                  ) -> list[tuple[str, dict[str, Any]]]:
        msg_id = f"msg_{uuid.uuid4().hex[:24]}"
        ev: list[tuple[str, dict[str, Any]]] = [("message_start", {
            "type": "message_start",
            "message": {"id": msg_id, "type": "message", "role": "assistant", "model": model,
                        "content": [], "stop_reason": None, "stop_sequence": None,
                        "usage": {"input_tokens": input_tokens, "output_tokens": 1,
                                  "cache_creation_input_tokens": 0,
                                  "cache_read_input_tokens": 0}}})]
        index = 0
        output_tokens = 0
        if reply.text:
            ev.append(("content_block_start", {"type": "content_block_start", "index": index,
                                               "content_block": {"type": "text", "text": ""}}))
            ev.append(("ping", {"type": "ping"}))
            for tok in re.findall(r"\S+\s*|\s+", reply.text):
                output_tokens += 1
                ev.append(("content_block_delta", {
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": "text_delta", "text": tok}}))
            ev.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
            index += 1
        n = self.json_fragment_chars
        for tu in reply.tool_uses:
            raw = json.dumps(tu.input)
            tool_id = tu.id or f"toolu_{uuid.uuid4().hex[:22]}"
            ev.append(("content_block_start", {
                "type": "content_block_start", "index": index,
                "content_block": {"type": "tool_use", "id": tool_id,
                                  "name": tu.name, "input": {}}}))
            for j in range(0, len(raw), n):
                output_tokens += 1
                ev.append(("content_block_delta", {
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": raw[j:j + n]}}))
            ev.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
            index += 1
        ev.append(("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use" if reply.tool_uses else "end_turn",
                      "stop_sequence": None},
            "usage": {"output_tokens": output_tokens}}))
        ev.append(("message_stop", {"type": "message_stop"}))
        return ev

    async def _events(self, reply: Reply, model: str, input_tokens: int,
                      failure: Failure | None) -> AsyncIterator[bytes]:
        if self.first_byte_delay_s:
            await asyncio.sleep(self.first_byte_delay_s)
        for i, (name, payload) in enumerate(self._payloads(reply, model, input_tokens)):
            if failure is not None and i == failure.after:
                if failure.kind == "drop":
                    raise DropConnection
                if failure.kind == "error_event":
                    yield f"event: error\ndata: {json.dumps(_status_error(failure))}\n\n".encode()
                    return
                if failure.kind == "hang":
                    await asyncio.Event().wait()
            if i and self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            yield f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()
