"""LLM `anthropic`: the Messages API with streaming and tool use.

Wire: `POST {base_url}/v1/messages` with `x-api-key` and `anthropic-version`, `stream: true`;
server-sent events `message_start` (input usage), `content_block_start` (text or tool_use),
`content_block_delta` (`text_delta`, `input_json_delta`), `content_block_stop`, `message_delta`
(stop reason, output usage), `message_stop`, plus `ping` and `error`.

Our neutral messages map as: system messages → the top-level `system` string; assistant tool
calls → `tool_use` blocks; tool results → `tool_result` blocks inside a user message (results of
parallel calls share one message). Consecutive same-role messages are merged and the first turn
must be the user's, as the API requires — a call where the agent spoke first gets a short
placeholder user turn in front.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import httpx
from pydantic import Field

from providers.base import (
    LLMEvent,
    LLMProvider,
    Message,
    ProviderError,
    SecretRef,
    TextDelta,
    ToolCall,
    ToolSpec,
    Usage,
)
from providers.http import (
    CloudConfig,
    iter_sse,
    open_stream,
    redact,
    resolve_api_key,
    shared_client,
    vendor_message,
)
from providers.usage import FirstResultClock

# Anthropic error types that another attempt may get past.
_RETRYABLE_ERRORS = frozenset({"overloaded_error", "api_error", "rate_limit_error",
                               "timeout_error"})
_SETTING_KEYS = ("temperature", "top_p", "max_tokens", "stop")


def _is_stop(event: str, _data: str) -> bool:
    """Anthropic's end of a message stream."""
    return event == "message_stop"


class AnthropicLLMConfig(CloudConfig):
    api_key: SecretRef
    model: str = "claude-haiku-4-5"
    base_url: str = Field("https://api.anthropic.com", pattern=r"^https?://")
    anthropic_version: str = "2023-06-01"
    # Comma-separated beta feature flags sent as `anthropic-beta`.
    beta: str | None = None
    max_tokens: int = Field(300, ge=1, le=64_000)
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, gt=0, le=1)
    # Stands in for the caller when the transcript starts with the agent's greeting.
    first_user_placeholder: str = "(The call has connected.)"
    read_timeout_s: float = Field(15.0, gt=0, le=300)


def to_anthropic(messages: list[Message], placeholder: str) -> tuple[str, list[dict[str, Any]]]:
    """Neutral messages → (system prompt, Anthropic messages)."""
    system_parts: list[str] = []
    out: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for m in messages:
        role = m.get("role")
        text = _text(m.get("content"))
        if role == "system":
            if text:
                system_parts.append(text)
        elif role == "user":
            add("user", [{"type": "text", "text": text}] if text.strip() else [])
        elif role == "assistant":
            blocks: list[dict[str, Any]] = []
            if text.strip():
                blocks.append({"type": "text", "text": text})
            for tc in m.get("tool_calls") or ():
                blocks.append({"type": "tool_use", "id": tc["id"], "name": tc["name"],
                               "input": tc.get("arguments") or {}})
            add("assistant", blocks)
        elif role == "tool":
            add("user", [{"type": "tool_result", "tool_use_id": m["tool_call_id"],
                          "content": text}])
        else:
            raise ProviderError("anthropic", f"unsupported message role {role!r}",
                                retryable=False)
    if not out or out[0]["role"] != "user":
        out.insert(0, {"role": "user", "content": [{"type": "text", "text": placeholder}]})
    # Tool results must lead their user message, right after the assistant's tool_use turn.
    for msg in out:
        if msg["role"] == "user":
            msg["content"].sort(key=lambda b: b["type"] != "tool_result")
    return "\n\n".join(system_parts), out


def to_anthropic_tools(tools: list[ToolSpec]) -> list[dict[str, Any]]:
    return [{"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in tools]


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return json.dumps(content)


class AnthropicLLM(LLMProvider):
    name: ClassVar[str] = "anthropic"
    Config: ClassVar[type[AnthropicLLMConfig]] = AnthropicLLMConfig
    config: AnthropicLLMConfig

    def build_body(
        self,
        messages: list[Message],
        tools: list[ToolSpec] | None,
        settings: dict[str, Any] | None,
    ) -> dict[str, Any]:
        cfg = self.config
        system, msgs = to_anthropic(messages, cfg.first_user_placeholder)
        opts: dict[str, Any] = {"temperature": cfg.temperature, "top_p": cfg.top_p,
                                "max_tokens": cfg.max_tokens}
        for k in _SETTING_KEYS:
            if settings and settings.get(k) is not None:
                opts[k] = settings[k]
        if "stop" in opts:
            stop = opts.pop("stop")
            opts["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        body: dict[str, Any] = {"model": cfg.model, "messages": msgs, "stream": True}
        if system:
            body["system"] = system
        body.update({k: v for k, v in opts.items() if v is not None})
        if tools:
            body["tools"] = to_anthropic_tools(tools)
        return body

    async def stream(
        self,
        messages: list[Message],
        tools: list[ToolSpec] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> AsyncIterator[LLMEvent]:
        cfg = self.config
        key = await resolve_api_key(self.ctx, cfg.api_key, self.name)
        assert key is not None
        headers = {
            "x-api-key": key,
            "anthropic-version": cfg.anthropic_version,
            "content-type": "application/json",
            "accept": "text/event-stream",
        }
        if cfg.beta:
            headers["anthropic-beta"] = cfg.beta
        body = json.dumps(self.build_body(messages, tools, settings)).encode()
        url = f"{cfg.base_url.rstrip('/')}/v1/messages"
        client = shared_client(self.ctx)
        timeout = cfg.httpx_timeout()

        def build() -> httpx.Request:
            return client.build_request("POST", url, content=body, headers=headers,
                                        timeout=timeout)

        watch = FirstResultClock(self.ctx, self.name)
        # index → {"id", "name", "json": [fragments], "input": dict}
        tool_blocks: dict[int, dict[str, Any]] = {}
        input_tokens = output_tokens = cache_read = cache_write = 0
        stopped = False
        async with open_stream(client, self.name, build, cfg.retry_policy()) as response:
            async for event, data in iter_sse(response, last=_is_stop):
                if event == "ping":
                    continue
                try:
                    payload = json.loads(data)
                except ValueError:
                    continue
                kind = payload.get("type", event)
                if kind == "error":
                    msg, code = vendor_message(payload)
                    raise ProviderError(self.name, redact(msg or "error in stream"),
                                        retryable=code in _RETRYABLE_ERRORS, code=code)
                if kind == "message_start":
                    u = (payload.get("message") or {}).get("usage") or {}
                    input_tokens = int(u.get("input_tokens") or 0)
                    output_tokens = int(u.get("output_tokens") or 0)
                    cache_read = int(u.get("cache_read_input_tokens") or 0)
                    cache_write = int(u.get("cache_creation_input_tokens") or 0)
                elif kind == "content_block_start":
                    block = payload.get("content_block") or {}
                    if block.get("type") == "tool_use":
                        watch.mark()
                        tool_blocks[int(payload.get("index", len(tool_blocks)))] = {
                            "id": block.get("id", ""), "name": block.get("name", ""),
                            "json": [], "input": block.get("input") or {},
                        }
                    elif block.get("type") == "text" and block.get("text"):
                        watch.mark()
                        yield TextDelta(block["text"])
                elif kind == "content_block_delta":
                    delta = payload.get("delta") or {}
                    dtype = delta.get("type")
                    if dtype == "text_delta" and delta.get("text"):
                        watch.mark()
                        yield TextDelta(delta["text"])
                    elif dtype == "input_json_delta":
                        blk = tool_blocks.get(int(payload.get("index", -1)))
                        if blk is not None and delta.get("partial_json"):
                            blk["json"].append(delta["partial_json"])
                    # thinking/signature/citation deltas are not spoken
                elif kind == "message_delta":
                    u = payload.get("usage") or {}
                    # Cumulative counts; newer API versions repeat input_tokens here too.
                    output_tokens = int(u.get("output_tokens") or output_tokens)
                    input_tokens = int(u.get("input_tokens") or input_tokens)
                elif kind == "message_stop":
                    stopped = True  # the last event: iter_sse reads the body out and ends
        if not stopped:
            raise ProviderError(self.name, "stream ended before message_stop", retryable=True,
                                code="incomplete_stream")
        for idx in sorted(tool_blocks):
            yield self._tool_call(tool_blocks[idx])
        model = cfg.model
        for metric, qty in (("input_tokens", input_tokens), ("output_tokens", output_tokens),
                            ("cached_input_tokens", cache_read),
                            ("cache_write_input_tokens", cache_write)):
            if qty > 0:  # yielded only; the host records LLM usage from the stream
                yield Usage(self.name, model, metric, float(qty))

    def _tool_call(self, blk: dict[str, Any]) -> ToolCall:
        raw = "".join(blk["json"]).strip()
        if not raw:
            args = blk["input"]
        else:
            try:
                args = json.loads(raw)
            except ValueError:
                raise ProviderError(
                    self.name, f"model returned invalid JSON input for tool {blk['name']!r}",
                    retryable=True, code="invalid_tool_arguments",
                ) from None
        if not isinstance(args, dict):
            args = {"value": args}
        return ToolCall(id=blk["id"], name=blk["name"], arguments=args)
