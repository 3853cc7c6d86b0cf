"""s2s `openai_realtime` and `azure_openai`: the OpenAI Realtime API over WebSocket.

Client events sent: `session.update` (instructions, voice, PCM16 24 kHz both ways, server VAD or
`turn_detection: null`, input transcription, tools), `input_audio_buffer.append`,
`response.create` (greeting; after a function result; at Phonebooth's end of turn, after
`input_audio_buffer.commit`), `response.cancel` (a reply cut by Phonebooth's VAD),
`conversation.item.create` with a
`function_call_output`, `conversation.item.truncate` (barge-in: `audio_end_ms` of the item the
caller heard). Server events read: `response.output_audio.delta` (GA; `response.audio.delta` in
the beta protocol Azure deployments still speak), the matching `…audio_transcript.delta`,
`input_audio_buffer.speech_started/stopped`,
`conversation.item.input_audio_transcription.completed`,
`response.function_call_arguments.done`, `response.done` (usage with audio/text token details)
and `error`. Azure: `{endpoint}/openai/realtime?api-version=…&deployment=…`, key in `api-key`.

`output: text` (hybrid): the session asks for text only (GA `output_modalities: ["text"]`; the
beta session's `modalities: ["text"]`) and reads `response.output_text.delta` / `.done` (beta:
`response.text.delta` / `.done`). `conversation.item.truncate` cuts audio only, so a text reply
the caller heard part of is replaced instead: `conversation.item.delete` of the model's item and
`conversation.item.create` of an assistant message holding the heard text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import numpy as np

from providers.base import ProviderError, ToolCall, ToolSpec, Usage
from providers.http import resolve_api_key
from providers.llm.openai import AzureSettings
from providers.s2s.base import (
    AudioOut,
    InputTranscript,
    OutputText,
    OutputTranscript,
    ResponseDone,
    S2SConfig,
    S2SEvent,
    S2SProvider,
    S2SSession,
    SpeechStarted,
    SpeechStopped,
    TextDone,
)
from providers.s2s.socket import JsonSocket, b64_pcm, pcm_b64

log = logging.getLogger(__name__)

OPENAI_REALTIME_URL = "wss://api.openai.com/v1/realtime"
RATE = 24000


class OpenAIRealtimeConfig(S2SConfig):
    model: str = "gpt-realtime"
    voice: str | None = "alloy"
    # Model that transcribes the caller (the realtime model itself never returns input text).
    transcription_model: str = "gpt-4o-mini-transcribe"


class AzureRealtimeSettings(AzureSettings):
    # The realtime endpoint exists only in the preview API versions.
    api_version: str = "2024-10-01-preview"


class AzureOpenAIRealtimeConfig(OpenAIRealtimeConfig):
    model: str = "gpt-4o-realtime-preview"
    azure: AzureRealtimeSettings


def _usage(provider: str, model: str, response: dict[str, Any]) -> list[Usage]:
    usage = response.get("usage") or {}
    out: list[Usage] = []
    for side in ("input", "output"):
        details = usage.get(f"{side}_token_details") or {}
        for kind in ("audio", "text"):
            n = details.get(f"{kind}_tokens")
            if isinstance(n, int | float) and n:
                out.append(Usage(provider, model, f"{side}_{kind}_tokens", float(n)))
    return out


def parse_event(provider: str, model: str, msg: dict[str, Any]) -> list[S2SEvent]:
    """Map one server event to ours; events we have no use for map to nothing."""
    t = msg.get("type")
    if t in ("response.output_audio.delta", "response.audio.delta"):
        return [AudioOut(str(msg.get("item_id", "")), b64_pcm(str(msg.get("delta", ""))))]
    if t in ("response.output_audio_transcript.delta", "response.audio_transcript.delta"):
        return [OutputTranscript(str(msg.get("item_id", "")), str(msg.get("delta", "")))]
    if t in ("response.output_text.delta", "response.text.delta"):
        return [OutputText(str(msg.get("item_id", "")), str(msg.get("delta", "")))]
    if t in ("response.output_text.done", "response.text.done"):
        return [TextDone(str(msg.get("item_id", "")))]
    if t == "input_audio_buffer.speech_started":
        return [SpeechStarted(int(msg.get("audio_start_ms", 0)))]
    if t == "input_audio_buffer.speech_stopped":
        return [SpeechStopped(int(msg.get("audio_end_ms", 0)))]
    if t == "conversation.item.input_audio_transcription.completed":
        return [InputTranscript(str(msg.get("transcript", "")))]
    if t == "response.function_call_arguments.done":
        try:
            args = json.loads(msg.get("arguments") or "{}")
        except ValueError:
            args = {}
        return [ToolCall(str(msg.get("call_id", "")), str(msg.get("name", "")),
                         args if isinstance(args, dict) else {})]
    if t == "response.done":
        response = msg.get("response") or {}
        return [*_usage(provider, model, response),
                ResponseDone(str(response.get("status", "completed")))]
    if t == "error":
        # Errors answer one client event (a truncate racing the end of an item, a reply asked
        # for while one is playing); the session goes on. A fatal one closes the socket.
        err = msg.get("error") or {}
        log.warning("%s: %s (%s)", provider, err.get("message"), err.get("code"))
        return []
    return []


class RealtimeSession(S2SSession):
    def __init__(self, sock: JsonSocket, model: str, *, ga: bool) -> None:
        self._sock = sock
        self._model = model
        self._ga = ga

    async def send_audio(self, samples: np.ndarray) -> None:
        await self._sock.send({"type": "input_audio_buffer.append", "audio": pcm_b64(samples)})

    async def events(self) -> AsyncIterator[S2SEvent]:
        async for msg in self._sock.messages():
            for ev in parse_event(self._sock.provider, self._model, msg):
                yield ev

    async def send_tool_result(self, call: ToolCall, output: str) -> None:
        await self._sock.send({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": call.id, "output": output}})
        await self._sock.send({"type": "response.create"})

    async def truncate(self, item_id: str, audio_end_ms: int) -> None:
        await self._sock.send({"type": "conversation.item.truncate", "item_id": item_id,
                               "content_index": 0, "audio_end_ms": max(0, int(audio_end_ms))})

    async def keep_heard_text(self, item_id: str, heard: str) -> None:
        # Truncation is for audio content only ("truncate a previous assistant message's
        # audio"); for a text item the vendor's own edit is delete + create: the model's item
        # goes, and an assistant message with just what the caller heard takes its place (at
        # the end of the conversation, before the caller's next turn is committed).
        await self._sock.send({"type": "conversation.item.delete", "item_id": item_id})
        if heard:
            part = "output_text" if self._ga else "text"
            await self._sock.send({"type": "conversation.item.create", "item": {
                "type": "message", "role": "assistant",
                "content": [{"type": part, "text": heard}]}})

    async def respond(self, instructions: str) -> None:
        await self._sock.send({"type": "response.create",
                               "response": {"instructions": instructions}})

    async def activity_start(self) -> None:
        # Audio streams continuously into the input buffer; the caller's turn is what lies in
        # it when the turn is committed, so the start needs no message.
        return None

    async def activity_end(self) -> None:
        # Without server VAD nothing commits the buffer or asks for a reply but the client.
        await self._sock.send({"type": "input_audio_buffer.commit"})
        await self._sock.send({"type": "response.create"})

    async def cancel_response(self) -> None:
        await self._sock.send({"type": "response.cancel"})

    async def aclose(self) -> None:
        await self._sock.close()


def session_update(cfg: OpenAIRealtimeConfig, instructions: str, tools: list[ToolSpec], *,
                   ga: bool) -> dict[str, Any]:
    vad: dict[str, Any] | None = (
        {"type": "server_vad"} if cfg.turn_detection == "server_vad" else None)
    fn_tools = [{"type": "function", "name": t.name, "description": t.description,
                 "parameters": t.parameters} for t in tools]
    text = cfg.output == "text"
    # With text output there is no model voice or output audio to describe.
    voice = {"voice": cfg.voice} if cfg.voice and not text else {}
    session: dict[str, Any]
    if ga:
        audio: dict[str, Any] = {
            "input": {"format": {"type": "audio/pcm", "rate": RATE}, "turn_detection": vad,
                      "transcription": {"model": cfg.transcription_model}}}
        if not text:
            audio["output"] = {"format": {"type": "audio/pcm", "rate": RATE}, **voice}
        session = {
            "type": "realtime", "model": cfg.model, "instructions": instructions,
            # GA takes one output modality: audio (with its transcript) or text.
            "output_modalities": ["text" if text else "audio"],
            "audio": audio, "tools": fn_tools,
        }
    else:
        session = {
            # The beta protocol: ["audio", "text"] is audio with its transcript.
            "modalities": ["text"] if text else ["audio", "text"],
            "instructions": instructions, "input_audio_format": "pcm16",
            **({} if text else {"output_audio_format": "pcm16"}),
            "input_audio_transcription": {"model": cfg.transcription_model},
            "turn_detection": vad, "tools": fn_tools, **voice,
        }
    if cfg.temperature is not None and not ga:
        session["temperature"] = cfg.temperature
    return {"type": "session.update", "session": session}


class OpenAIRealtime(S2SProvider):
    name: ClassVar[str] = "openai_realtime"
    Config: ClassVar[type[OpenAIRealtimeConfig]] = OpenAIRealtimeConfig
    input_rate: ClassVar[int] = RATE
    output_rate: ClassVar[int] = RATE
    config: OpenAIRealtimeConfig
    ga: ClassVar[bool] = True

    async def _endpoint(self) -> tuple[str, dict[str, str]]:
        key = await resolve_api_key(self.ctx, self.config.api_key, self.name)
        base = (self.config.base_url or OPENAI_REALTIME_URL).rstrip("/")
        return f"{base}?model={self.config.model}", {"Authorization": f"Bearer {key}"}

    async def connect(self, instructions: str, tools: list[ToolSpec]) -> S2SSession:
        url, headers = await self._endpoint()
        sock = JsonSocket(self.name)
        await sock.open(url, headers, self.config.retry_policy(), self.config.connect_timeout_s)
        session = RealtimeSession(sock, self.config.model, ga=self.ga)
        try:
            await sock.send(session_update(self.config, instructions, tools, ga=self.ga))
            # The vendor answers `session.created` first; an `error` here means a refused setup.
            async for msg in sock.messages():
                if msg.get("type") == "session.updated":
                    return session
                if msg.get("type") == "error":
                    err = msg.get("error") or {}
                    code = err.get("code")
                    raise ProviderError(self.name, str(err.get("message") or "setup refused"),
                                        code=str(code) if code else None)
            raise ProviderError(self.name, "session closed during setup")
        except BaseException:
            await sock.close()
            raise


class AzureOpenAIRealtime(OpenAIRealtime):
    name: ClassVar[str] = "azure_openai"
    Config: ClassVar[type[OpenAIRealtimeConfig]] = AzureOpenAIRealtimeConfig
    config: AzureOpenAIRealtimeConfig
    # Azure deployments speak the beta event names (`response.audio.delta`, flat session).
    ga: ClassVar[bool] = False

    async def _endpoint(self) -> tuple[str, dict[str, str]]:
        key = await resolve_api_key(self.ctx, self.config.api_key, self.name)
        az = self.config.azure
        base = az.endpoint.rstrip("/").replace("https://", "wss://", 1).replace(
            "http://", "ws://", 1)
        url = f"{base}/openai/realtime?api-version={az.api_version}&deployment={az.deployment}"
        return url, {"api-key": key or ""}
