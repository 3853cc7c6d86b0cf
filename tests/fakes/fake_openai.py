"""A local fake of the OpenAI HTTP API (and so of every OpenAI-compatible server).

Endpoints (all under `base_url` = http://127.0.0.1:PORT/v1; Azure's deployment form under
`azure_endpoint`):
- `POST /v1/chat/completions` and `POST /openai/deployments/{d}/chat/completions?api-version=…`
  (endpoint name "chat"): SSE streaming only. Text comes word by word; tool calls as OpenAI sends
  them (first fragment with id/name, then `arguments` pieces keyed by `index`; set
  `interleave_tool_calls` to interleave parallel calls); a usage chunk when
  `stream_options.include_usage`; then `data: [DONE]`. Requests are validated like the real API
  (message roles, tool_call arguments as JSON strings, tool_call_id matching) → 400 with
  `{"error": {"message", "type", "param", "code"}}`.
- `POST /v1/audio/transcriptions` ("transcriptions"): multipart (`file` must be a WAV, `model`,
  optional `language`/`prompt`/`response_format`); `{"text", "usage"}`; silent audio → "".
- `POST /v1/audio/speech` ("speech"): streams `response_format: pcm` (24 kHz s16le) — a phase
  continuous tone (`speech_audio(text)` is exactly what a full response contains), deliberately
  split at odd byte boundaries.

Script replies with `queue_chat(ChatReply(...))` / `queue_transcript("...")`; otherwise
`default_reply` / `default_transcript` are used. Auth: `Authorization: Bearer <api_key>` (or the
`api-key` header on the Azure path); a wrong key gets OpenAI's 401 body.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
import uuid
import wave
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tests.fakes.vendor_base import (
    DropConnection,
    Failure,
    HttpExchange,
    HttpVendor,
    Render,
    parse_multipart,
    speech,
)

SPEECH_RATE = 24000
_ROLES = {"system", "developer", "user", "assistant", "tool"}


@dataclass
class FakeToolCall:
    name: str
    arguments: dict[str, Any]
    id: str | None = None


@dataclass
class ChatReply:
    text: str = ""
    tool_calls: list[FakeToolCall] = field(default_factory=list)


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _err(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _status_error_body(f: Failure) -> dict[str, Any]:
    if f.status == 429:
        return _err(f.message, "requests", f.code or "rate_limit_exceeded")
    if f.status in (401, 403):
        return _err(f.message, "invalid_request_error", f.code or "invalid_api_key")
    if f.status < 500:
        return _err(f.message, "invalid_request_error", f.code)
    return _err(f.message, "server_error", f.code)


class FakeOpenAI(HttpVendor):
    thread_name = "fake-openai"

    def __init__(self, *, default_reply: str = "Hello from the fake model.",
                 default_transcript: str = "hello world", tts_ms_per_char: float = 40.0,
                 tts_chunk_ms: int = 100, arg_fragment_chars: int = 7,
                 interleave_tool_calls: bool = False, render: Render | None = None,
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.render = render
        self.default_reply = default_reply
        self.default_transcript = default_transcript
        self.tts_ms_per_char = tts_ms_per_char
        self.tts_chunk_ms = tts_chunk_ms
        self.arg_fragment_chars = arg_fragment_chars
        self.interleave_tool_calls = interleave_tool_calls
        self.chat_replies: deque[ChatReply] = deque()
        self.transcripts: deque[str] = deque()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def azure_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        super().reset()
        self.chat_replies.clear()
        self.transcripts.clear()

    def queue_chat(self, *replies: ChatReply | str) -> None:
        for r in replies:
            self.chat_replies.append(ChatReply(text=r) if isinstance(r, str) else r)

    def queue_transcript(self, *texts: str) -> None:
        self.transcripts.extend(texts)

    def speech_audio(self, text: str) -> np.ndarray:
        return speech(self.render, text, SPEECH_RATE, self.tts_ms_per_char)

    # -- ASGI ---------------------------------------------------------------------------------

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        azure = re.fullmatch(r"/openai/deployments/([^/]+)/chat/completions", path)
        endpoint = {
            "/v1/chat/completions": "chat",
            "/v1/audio/transcriptions": "transcriptions",
            "/v1/audio/speech": "speech",
        }.get(path, "chat" if azure else "unknown")
        rec = await self._record_http(endpoint, scope, receive)
        headers, query = rec.headers, rec.query
        ex = HttpExchange(scope, receive, send, rec)
        if endpoint == "unknown":
            await ex.json_response(404, _err(f"Invalid URL (POST {path})", "invalid_request_error"))
            return

        presented = headers.get("api-key") if azure else None
        auth = headers.get("authorization", "")
        if presented is None and auth.startswith("Bearer "):
            presented = auth[len("Bearer "):]
        if not self.key_ok(presented):
            masked = (presented or "")[:3] + "***" + (presented or "")[-2:]
            await ex.json_response(401, _err(
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error", "invalid_api_key"))
            return
        if azure and not query.get("api-version"):
            await ex.json_response(404, _err("Resource not found", "invalid_request_error"))
            return

        failure = self.failures.take(endpoint)
        if await ex.scripted(failure, _status_error_body):
            return

        try:
            if endpoint == "chat":
                await self._chat(ex, failure, azure is not None)
            elif endpoint == "transcriptions":
                await self._transcriptions(ex)
            else:
                await self._speech(ex, failure)
        except _BadRequest as exc:
            await ex.json_response(400, _err(str(exc), "invalid_request_error", None, exc.param))

    # -- chat ---------------------------------------------------------------------------------

    @staticmethod
    def _validate_chat(body: Any, azure: bool) -> None:
        if not isinstance(body, dict):
            raise _BadRequest("We could not parse the JSON body of your request.")
        if not azure and not body.get("model"):
            raise _BadRequest("you must provide a model parameter", "model")
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise _BadRequest("'messages' must contain at least one message", "messages")
        if body.get("stream") is not True:
            raise _BadRequest("this fake only serves stream=true", "stream")
        pending_ids: set[str] = set()
        for i, m in enumerate(msgs):
            role = m.get("role")
            if role not in _ROLES:
                raise _BadRequest(f"Invalid value for 'messages[{i}].role': {role!r}",
                                  f"messages.[{i}].role")
            if role == "assistant" and m.get("tool_calls"):
                for tc in m["tool_calls"]:
                    fn = tc.get("function") or {}
                    if tc.get("type") != "function" or not tc.get("id") or not fn.get("name"):
                        raise _BadRequest(f"Invalid tool call in messages[{i}]",
                                          f"messages.[{i}].tool_calls")
                    if not isinstance(fn.get("arguments"), str):
                        raise _BadRequest(
                            f"Invalid type for 'messages[{i}].tool_calls[0].function.arguments':"
                            " expected a string", f"messages.[{i}].tool_calls")
                    pending_ids.add(tc["id"])
            elif role == "tool":
                tcid = m.get("tool_call_id")
                if tcid not in pending_ids:
                    raise _BadRequest(
                        "Invalid parameter: messages with role 'tool' must be a response to a "
                        "preceeding message with 'tool_calls'.", f"messages.[{i}].role")
            elif not isinstance(m.get("content"), str):
                raise _BadRequest(f"Invalid content in messages[{i}]", f"messages.[{i}].content")
        for t in body.get("tools") or ():
            if t.get("type") != "function" or not (t.get("function") or {}).get("name"):
                raise _BadRequest("Invalid tools entry", "tools")

    async def _chat(self, ex: HttpExchange, failure: Failure | None, azure: bool) -> None:
        try:
            body = json.loads(ex.rec.body)
        except ValueError:
            body = None
        ex.rec.json = body
        self._validate_chat(body, azure)
        reply = self.chat_replies.popleft() if self.chat_replies else ChatReply(self.default_reply)
        model = body.get("model") or "azure-deployment"
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        prompt_tokens = max(1, len(json.dumps(body["messages"])) // 4)
        await ex.stream(200, {"content-type": "text/event-stream"},
                        self._chat_stream(reply, model, include_usage, prompt_tokens, failure))

    def _chat_payloads(self, reply: ChatReply, model: str, include_usage: bool,
                       prompt_tokens: int) -> list[dict[str, Any]]:
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": cid, "object": "chat.completion.chunk", "created": created,
                    "model": model, "system_fingerprint": "fp_fake",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                 "finish_reason": finish}]}

        out = [chunk({"role": "assistant", "content": "" if not reply.tool_calls else None})]
        tokens = re.findall(r"\S+\s*|\s+", reply.text)
        out += [chunk({"content": t}) for t in tokens]
        n = self.arg_fragment_chars
        per_call: list[list[dict[str, Any]]] = []
        for i, tc in enumerate(reply.tool_calls):
            args = json.dumps(tc.arguments)
            frags = [{"index": i, "id": tc.id or f"call_{uuid.uuid4().hex[:20]}",
                      "type": "function", "function": {"name": tc.name, "arguments": ""}}]
            frags += [{"index": i, "function": {"arguments": args[j:j + n]}}
                      for j in range(0, len(args), n)]
            per_call.append(frags)
        if self.interleave_tool_calls:
            longest = max((len(f) for f in per_call), default=0)
            order = [f[k] for k in range(longest) for f in per_call if k < len(f)]
        else:
            order = [frag for frags in per_call for frag in frags]
        out += [chunk({"tool_calls": [frag]}) for frag in order]
        out.append(chunk({}, "tool_calls" if reply.tool_calls else "stop"))
        if include_usage:
            completion = len(tokens) + sum(len(f) for f in per_call)
            out.append({"id": cid, "object": "chat.completion.chunk", "created": created,
                        "model": model, "system_fingerprint": "fp_fake", "choices": [],
                        "usage": {"prompt_tokens": prompt_tokens,
                                  "completion_tokens": completion,
                                  "total_tokens": prompt_tokens + completion,
                                  "prompt_tokens_details": {"cached_tokens": 0}}})
        return out

    async def _chat_stream(self, reply: ChatReply, model: str, include_usage: bool,
                           prompt_tokens: int, failure: Failure | None) -> AsyncIterator[bytes]:
        if self.first_byte_delay_s:
            await asyncio.sleep(self.first_byte_delay_s)
        payloads = self._chat_payloads(reply, model, include_usage, prompt_tokens)
        for i, p in enumerate(payloads):
            if failure is not None and i == failure.after:
                if failure.kind == "drop":
                    raise DropConnection
                if failure.kind == "error_event":
                    err = _status_error_body(failure)
                    yield f"data: {json.dumps(err)}\n\n".encode()
                    return
                if failure.kind == "hang":
                    await asyncio.Event().wait()
            if i and self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            yield f"data: {json.dumps(p)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    # -- transcriptions -----------------------------------------------------------------------

    async def _transcriptions(self, ex: HttpExchange) -> None:
        ctype = ex.rec.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise _BadRequest("Invalid Content-Type header; expected multipart/form-data")
        form = parse_multipart(ctype, ex.rec.body)
        ex.rec.form = form
        if not form.get("model"):
            raise _BadRequest("you must provide a model parameter", "model")
        file = form.get("file")
        if not isinstance(file, tuple):
            raise _BadRequest("you must provide a file parameter", "file")
        try:
            with wave.open(io.BytesIO(file[1]), "rb") as w:
                rate = w.getframerate()
                frames = w.readframes(w.getnframes())
        except (wave.Error, EOFError):
            raise _BadRequest("Invalid file format. Supported formats: ['flac', 'm4a', 'mp3', "
                              "'mp4', 'mpeg', 'mpga', 'oga', 'ogg', 'wav', 'webm']",
                              "file") from None
        samples = np.frombuffer(frames, dtype="<i2")
        seconds = len(samples) / rate if rate else 0.0
        if self.first_byte_delay_s:
            await asyncio.sleep(self.first_byte_delay_s)
        loud = samples.size and float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) > 300
        text = ""
        if loud:
            text = self.transcripts.popleft() if self.transcripts else self.default_transcript
        if form.get("response_format") == "text":
            await ex.respond(200, text.encode(), {"content-type": "text/plain"})
            return
        await ex.json_response(200, {"text": text,
                                     "usage": {"type": "duration", "seconds": round(seconds)}})

    # -- speech -------------------------------------------------------------------------------

    async def _speech(self, ex: HttpExchange, failure: Failure | None) -> None:
        try:
            body = json.loads(ex.rec.body)
        except ValueError:
            raise _BadRequest("We could not parse the JSON body of your request.") from None
        ex.rec.json = body
        for name in ("model", "input", "voice"):
            if not body.get(name):
                raise _BadRequest(f"you must provide a {name} parameter", name)
        if body.get("response_format", "mp3") != "pcm":
            raise _BadRequest("this fake only serves response_format=pcm", "response_format")
        pcm = self.speech_audio(body["input"]).astype("<i2").tobytes()
        step = SPEECH_RATE * 2 * self.tts_chunk_ms // 1000 + 1  # odd: splits samples on purpose
        await ex.stream(200, {"content-type": "audio/pcm"}, self._paced(pcm, step, failure))
