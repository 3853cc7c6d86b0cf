"""LLM `openai`: Chat Completions streaming, for OpenAI and every server that speaks its API.

`base_url` points it at Groq, Together, Fireworks, Mistral, OpenRouter, Gemini's OpenAI
endpoint, Ollama, vLLM or llama.cpp's server; the `azure` block targets an Azure OpenAI
deployment (`{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=…`, key in
the `api-key` header).

Streaming: text deltas are yielded as they arrive. Tool calls arrive as fragments keyed by
`index` (several calls may interleave when the model calls tools in parallel); their JSON argument
strings are assembled per index and emitted as complete `ToolCall`s once the model's turn ends.
Usage comes from the final chunk requested with `stream_options.include_usage`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from providers.base import (
    LLMEvent,
    LLMProvider,
    Message,
    ProviderError,
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

OPENAI_BASE_URL = "https://api.openai.com/v1"

# Engine-supplied per-request settings this adapter understands (others are ignored).
_SETTING_KEYS = ("temperature", "top_p", "max_tokens", "stop", "tool_choice", "seed")


class AzureSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    endpoint: str = Field(pattern=r"^https?://", description="https://NAME.openai.azure.com")
    deployment: str = Field(min_length=1)
    api_version: str = "2024-10-21"


class OpenAILLMConfig(CloudConfig):
    model: str = "gpt-4o-mini"
    base_url: str = Field(OPENAI_BASE_URL, pattern=r"^https?://")
    azure: AzureSettings | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(300, ge=1, le=100_000)
    # OpenAI's own API wants `max_completion_tokens` (reasoning models reject `max_tokens`);
    # most compatible servers only know `max_tokens`. Default: pick by endpoint.
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] | None = None
    parallel_tool_calls: bool | None = None
    # Ask for the usage chunk; turn off for servers that reject `stream_options`.
    include_usage: bool = True
    organization: str | None = None
    # Extra headers (e.g. OpenRouter's HTTP-Referer / X-Title) and body fields (vendor options).
    headers: dict[str, str] = Field(default_factory=dict)
    extra_body: dict[str, Any] = Field(default_factory=dict)
    read_timeout_s: float = Field(15.0, gt=0, le=300)

    @model_validator(mode="after")
    def _key_needed(self) -> OpenAILLMConfig:
        # Local servers (Ollama, vLLM, llama.cpp) need no key; OpenAI and Azure always do.
        if self.api_key is None and (self.azure is not None or self.base_url == OPENAI_BASE_URL):
            raise ValueError("api_key is required for OpenAI and Azure OpenAI")
        return self


def to_openai_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Our neutral chat shape → OpenAI's (tool call arguments become JSON strings)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        content = _text(m.get("content"))
        if role == "assistant" and m.get("tool_calls"):
            out.append({
                "role": "assistant",
                "content": content or None,
                "tool_calls": [
                    {
                        "id": tc["id"],
                        "type": "function",
                        "function": {
                            "name": tc["name"],
                            "arguments": json.dumps(tc.get("arguments") or {}),
                        },
                    }
                    for tc in m["tool_calls"]
                ],
            })
        elif role == "tool":
            out.append({"role": "tool", "tool_call_id": m["tool_call_id"], "content": content})
        elif role in ("system", "user", "assistant"):
            out.append({"role": role, "content": content})
        else:
            raise ProviderError("openai", f"unsupported message role {role!r}", retryable=False)
    return out


def to_openai_tools(tools: list[ToolSpec]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
        }
        for t in tools
    ]


def _is_done(_event: str, data: str) -> bool:
    """OpenAI's end of a chat stream."""
    return data.strip() == "[DONE]"


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return json.dumps(content)


class _ToolCallAssembler:
    """Collects streamed tool-call fragments per index (parallel calls interleave)."""

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, fragments: list[dict[str, Any]]) -> None:
        for pos, frag in enumerate(fragments):
            idx = frag.get("index")
            if idx is None:
                # Some servers omit `index`; fall back to the call id, then the list position.
                frag_id = frag.get("id")
                idx = self._index_for_id(frag_id) if frag_id else None
                idx = pos if idx is None else idx
            call = self._calls.setdefault(int(idx), {"id": "", "name": "", "args": []})
            if frag.get("id") and not call["id"]:
                call["id"] = frag["id"]
            fn = frag.get("function") or {}
            if fn.get("name") and not call["name"]:
                call["name"] = fn["name"]
            if fn.get("arguments"):
                call["args"].append(fn["arguments"])

    def _index_for_id(self, call_id: str) -> int | None:
        for idx, call in self._calls.items():
            if call["id"] == call_id:
                return idx
        return len(self._calls)

    def __bool__(self) -> bool:
        return bool(self._calls)

    def complete(self) -> list[ToolCall]:
        out: list[ToolCall] = []
        for idx in sorted(self._calls):
            call = self._calls[idx]
            raw = "".join(call["args"]).strip()
            try:
                args = json.loads(raw) if raw else {}
            except ValueError:
                # Usually a truncated generation; another attempt normally produces valid JSON.
                raise ProviderError(
                    self._provider,
                    f"model returned invalid JSON arguments for tool {call['name']!r}",
                    retryable=True,
                    code="invalid_tool_arguments",
                ) from None
            if not isinstance(args, dict):
                args = {"value": args}
            out.append(ToolCall(id=call["id"] or f"call_{idx}", name=call["name"], arguments=args))
        self._calls.clear()
        return out


class OpenAILLM(LLMProvider):
    name: ClassVar[str] = "openai"
    Config: ClassVar[type[OpenAILLMConfig]] = OpenAILLMConfig
    config: OpenAILLMConfig

    def _url(self) -> str:
        az = self.config.azure
        if az is not None:
            return (f"{az.endpoint.rstrip('/')}/openai/deployments/{az.deployment}"
                    f"/chat/completions?api-version={az.api_version}")
        return f"{self.config.base_url.rstrip('/')}/chat/completions"

    async def _headers(self) -> dict[str, str]:
        cfg = self.config
        key = await resolve_api_key(self.ctx, cfg.api_key, self.name, required=False)
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        if key:
            if cfg.azure is not None:
                headers["api-key"] = key
            else:
                headers["authorization"] = f"Bearer {key}"
        if cfg.organization:
            headers["openai-organization"] = cfg.organization
        headers.update(cfg.headers)
        return headers

    def build_body(
        self,
        messages: list[Message],
        tools: list[ToolSpec] | None,
        settings: dict[str, Any] | None,
    ) -> dict[str, Any]:
        cfg = self.config
        opts: dict[str, Any] = {
            "temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens,
        }
        for k in _SETTING_KEYS:
            if settings and settings.get(k) is not None:
                opts[k] = settings[k]
        body: dict[str, Any] = {"messages": to_openai_messages(messages), "stream": True}
        if cfg.azure is None:
            body["model"] = cfg.model
        if cfg.include_usage:
            body["stream_options"] = {"include_usage": True}
        max_tokens = opts.pop("max_tokens")
        if max_tokens is not None:
            param = cfg.max_tokens_param or (
                "max_completion_tokens"
                if cfg.azure is not None or cfg.base_url == OPENAI_BASE_URL
                else "max_tokens"
            )
            body[param] = max_tokens
        body.update({k: v for k, v in opts.items() if v is not None})
        if tools:
            body["tools"] = to_openai_tools(tools)
            if cfg.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = cfg.parallel_tool_calls
        body.update(cfg.extra_body)
        return body

    async def stream(
        self,
        messages: list[Message],
        tools: list[ToolSpec] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> AsyncIterator[LLMEvent]:
        cfg = self.config
        body = json.dumps(self.build_body(messages, tools, settings)).encode()
        headers = await self._headers()
        url = self._url()
        client = shared_client(self.ctx)
        timeout = cfg.httpx_timeout()

        def build() -> httpx.Request:
            return client.build_request("POST", url, content=body, headers=headers,
                                        timeout=timeout)

        watch = FirstResultClock(self.ctx, self.name)
        tool_calls = _ToolCallAssembler(self.name)
        usage: dict[str, Any] | None = None
        finished = False
        async with open_stream(client, self.name, build, cfg.retry_policy()) as response:
            async for event, data in iter_sse(response, last=_is_done):
                if _is_done(event, data):
                    finished = True
                    continue
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue  # keep-alive noise from some proxies
                if chunk.get("error"):
                    msg, code = vendor_message(chunk)
                    raise ProviderError(self.name, redact(msg or "error in stream"),
                                        retryable=True, code=code)
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    if choice.get("index", 0) != 0:
                        continue
                    delta = choice.get("delta") or {}
                    text = delta.get("content")
                    if text:
                        watch.mark()
                        yield TextDelta(text)
                    if delta.get("tool_calls"):
                        watch.mark()
                        tool_calls.add(delta["tool_calls"])
                    if choice.get("finish_reason"):
                        finished = True
                        for call in tool_calls.complete():
                            yield call
        if not finished:
            raise ProviderError(self.name, "stream ended before the model finished",
                                retryable=True, code="incomplete_stream")
        for call in tool_calls.complete():
            yield call
        # Usage is yielded, not sent to ctx.on_usage: the host records LLM usage from the stream.
        for item in self._usage(usage):
            yield item

    def _usage(self, usage: dict[str, Any] | None) -> list[Usage]:
        if not usage:
            return []
        model = self.config.azure.deployment if self.config.azure else self.config.model
        out = [
            Usage(self.name, model, "input_tokens", float(usage.get("prompt_tokens") or 0)),
            Usage(self.name, model, "output_tokens", float(usage.get("completion_tokens") or 0)),
        ]
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached:
            out.append(Usage(self.name, model, "cached_input_tokens", float(cached)))
        return [u for u in out if u.quantity > 0]

    @property
    def model_name(self) -> str:
        return self.config.azure.deployment if self.config.azure else self.config.model
