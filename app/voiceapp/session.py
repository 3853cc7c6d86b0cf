"""`Session`: one connection's handle, with the commands of docs/customer-websocket.md as methods.

Every method only queues a message: a sender task writes them to the socket in order. They may be
called from async handlers, from sync handlers (which run in worker threads) and from any other
thread. A message sent after the connection closed is logged and dropped; it never raises into
the handler.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from app.voiceapp.event import Event

log = logging.getLogger("app.voiceapp")

SendText = Callable[[str], Awaitable[None]]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _wav_bytes(source: str | os.PathLike[str] | bytes) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    with open(source, "rb") as f:
        return f.read()


class Session:
    """One call's connection. `data` is yours, to keep state between handlers."""

    def __init__(self, send: SendText, *, agent_session_id: str = "") -> None:
        self.agent_session_id = agent_session_id
        self.call_id = ""
        self.stream_id = ""
        self.mode = ""
        self.data: dict[str, Any] = {}
        self._send = send
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self._request_id: str | None = None
        self._cancelled: set[str] = set()
        self._sender = self._loop.create_task(self._run_sender())

    # -- state ----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def request_id(self) -> str | None:
        """Text mode: the id of the latest `llm.request`."""
        return self._request_id

    def cancelled(self, request_id: str | None = None) -> bool:
        """Text mode: whether `llm.cancelled` came for `request_id` (default: the latest
        request), or the connection closed. Check it between tokens to stop streaming."""
        rid = self._request_id if request_id is None else request_id
        return self._closed or (rid is not None and rid in self._cancelled)

    def _observe(self, event: Event) -> None:
        """Keep the session's fields up to date; called before the event's handlers run."""
        kind = event.type
        if kind == "session.started":
            self.agent_session_id = str(event.get("agent_session_id") or self.agent_session_id)
            self.call_id = str(event.get("call_id") or self.call_id)
            self.mode = str(event.get("mode") or self.mode)
        elif kind == "start":
            start = event.get("start")
            if isinstance(start, dict):
                self.stream_id = str(start.get("streamId") or self.stream_id)
                self.call_id = str(start.get("callId") or self.call_id)
            self.mode = self.mode or "audio"
        elif kind == "llm.request":
            rid = event.get("request_id")
            if isinstance(rid, str):
                self._request_id = rid
        elif kind == "llm.cancelled":
            rid = event.get("request_id")
            if isinstance(rid, str):
                self._cancelled.add(rid)
        if not self.agent_session_id and isinstance(event.get("agent_session_id"), str):
            self.agent_session_id = event["agent_session_id"]

    # -- the sender -----------------------------------------------------------------------------

    def _put(self, item: tuple[str, dict[str, Any]]) -> None:
        if self._sender.done():  # queued from a thread just as the connection closed
            log.warning("voiceapp: session %s is closed; dropped %s", self.agent_session_id,
                        _describe(item[1]))
        else:
            self._queue.put_nowait(item)

    def send_raw(self, message: dict[str, Any]) -> None:
        """Send any message as it is (one JSON text frame).

        A message that is not JSON-serializable raises TypeError / ValueError here, in the
        caller; a closed connection never raises (the message is logged and dropped)."""
        text = json.dumps(message)
        with self._lock:
            if self._closed:
                log.warning("voiceapp: session %s is closed; dropped %s", self.agent_session_id,
                            _describe(message))
                return
            try:
                on_loop = asyncio.get_running_loop() is self._loop
            except RuntimeError:
                on_loop = False
            if on_loop:
                self._put((text, message))
            else:
                try:
                    self._loop.call_soon_threadsafe(self._put, (text, message))
                except RuntimeError:  # the loop itself is gone
                    log.warning("voiceapp: event loop closed; dropped %s", _describe(message))

    async def _run_sender(self) -> None:
        send_failed = False
        while True:
            item = await self._queue.get()
            if item is None:
                break
            text, message = item
            if send_failed:
                log.warning("voiceapp: session %s is closed; dropped %s", self.agent_session_id,
                            _describe(message))
                continue
            try:
                await self._send(text)
            except Exception as exc:  # the socket closed under us
                send_failed = True
                log.warning("voiceapp: session %s: could not send %s (%s); dropped",
                            self.agent_session_id, _describe(message), exc)

    async def _close(self) -> None:
        """Stop taking messages; send what is already queued if the socket still takes it."""
        with self._lock:
            self._closed = True
        self._queue.put_nowait(None)
        await self._sender
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                log.warning("voiceapp: session %s is closed; dropped %s",
                            self.agent_session_id, _describe(item[1]))

    # -- managed mode ---------------------------------------------------------------------------

    def send_tool_result(self, id: str, result: Any) -> None:
        """Answer a `tool.called` (with `"respond": true`): the tool's result for the LLM."""
        self.send_raw({"type": "tool.result", "id": id, "result": result})

    def send_tool_error(self, id: str, error: str) -> None:
        """Answer a `tool.called`: the tool failed, and the LLM is told `error`."""
        self.send_raw({"type": "tool.error", "id": id, "error": error})

    # -- text mode ------------------------------------------------------------------------------

    def send_text(self, token: str, last: bool = False, request_id: str | None = None) -> None:
        """The next piece of the answer to `request_id` (default: the latest `llm.request`)."""
        message: dict[str, Any] = {"type": "text", "token": token, "last": last}
        rid = request_id if request_id is not None else self._request_id
        if rid is not None:
            message["request_id"] = rid
        self.send_raw(message)

    def extend_wait(self, seconds: float | None = None) -> None:
        """Ask for more time for the reply (text mode) or the tool result (managed mode)."""
        message: dict[str, Any] = {"type": "agent_session.extend_wait"}
        if seconds is not None:
            message["seconds"] = seconds
        self.send_raw(message)

    # -- audio mode -----------------------------------------------------------------------------

    def send_media(
        self,
        payload_b64: str | bytes,
        content_type: str = "audio/x-mulaw",
        sample_rate: int = 8000,
    ) -> None:
        """Agent audio: base64 text (or raw bytes, encoded here) of μ-law or 16-bit PCM."""
        payload = _b64(payload_b64) if isinstance(payload_b64, bytes) else payload_b64
        self.send_raw({"event": "playAudio", "media": {
            "contentType": content_type, "sampleRate": sample_rate, "payload": payload}})

    def send_checkpoint(self, name: str) -> None:
        """Answered with `playedStream` once the audio sent before it was played."""
        self.send_raw({"event": "checkpoint", "name": name})

    def clear_audio(self) -> None:
        """Drop the agent audio still queued; answered with `clearedAudio`."""
        self.send_raw({"event": "clearAudio"})

    # -- control (every mode) -------------------------------------------------------------------

    def update(
        self,
        system_prompt: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        llm: dict[str, Any] | None = None,
    ) -> None:
        """From the next turn: a new prompt, tools (`[]` removes all) and/or LLM block."""
        message: dict[str, Any] = {"type": "agent_session.update"}
        if system_prompt is not None:
            message["system_prompt"] = system_prompt
        if tools is not None:
            message["tools"] = tools
        if llm is not None:
            message["llm"] = llm
        self.send_raw(message)

    def handoff(self, *, system_prompt: str, tools: list[dict[str, Any]] | None = None,
                llm: dict[str, Any] | None = None, summary: str | None = None,
                new_agent: str = "") -> None:
        """Another persona takes the call over from the next turn, with the conversation so
        far: one update (prompt, and tools and/or LLM), then `summary` as context. The call
        reports `agent.handoff`."""
        message: dict[str, Any] = {"type": "agent_session.update", "system_prompt": system_prompt}
        if tools is not None:
            message["tools"] = tools
        if llm is not None:
            message["llm"] = llm
        if new_agent:
            message["new_agent"] = new_agent
        self.send_raw(message)
        if summary:
            self.inject(summary)

    def inject(self, content: str) -> None:
        """Context for the next turn."""
        self.send_raw({"type": "agent_session.inject", "content": content})

    def speak(self, text: str, allow_interruption: bool = True) -> None:
        """Say `text` now, with the agent's voice."""
        self.send_raw({"type": "agent_session.speak", "text": text,
                       "allow_interruption": allow_interruption})

    def play(self, wav: str | os.PathLike[str] | bytes, allow_interruption: bool = True) -> None:
        """Play a WAV file (a path, or its bytes); `play.completed` follows."""
        self.send_raw({"type": "agent_session.play", "audio_data": _b64(_wav_bytes(wav)),
                       "allow_interruption": allow_interruption})

    def transfer(
        self, destination: str | list[str], dial_mode: str = "parallel", timeout: float = 30
    ) -> None:
        """Transfer the caller to a number or sip: URI. (AgentStack's signature: Phonebooth
        takes one destination per transfer and refuses a list of several.)"""
        self.send_raw({"type": "agent_session.transfer", "destination": destination,
                       "dial_mode": dial_mode, "timeout": timeout})

    def send_dtmf(self, digits: str) -> None:
        """Send keypad tones into the call; `dtmf.sent` follows."""
        self.send_raw({"type": "agent_session.send_dtmf", "digits": digits})

    def hangup(self) -> None:
        """End the call."""
        self.send_raw({"type": "agent_session.hangup"})

    def play_background(
        self, sound: str | os.PathLike[str] | bytes, volume: float = 0.5, loop: bool = True
    ) -> None:
        """Background audio under the agent's voice: a built-in name (`office`, `hum`,
        `hold_music`), a base64 WAV, a WAV file's path (`pathlib.Path`) or its bytes."""
        value = sound if isinstance(sound, str) else _b64(_wav_bytes(sound))
        self.send_raw({"type": "audio.mix", "sound": value, "volume": volume, "loop": loop})

    def stop_background(self) -> None:
        """Stop the background audio."""
        self.send_raw({"type": "audio.mix_enable", "enabled": False})


def _describe(message: Any) -> str:
    if isinstance(message, dict):
        return str(message.get("type") or message.get("event") or "message")
    return "message"
