"""Protocol-level fakes of the speech-to-speech vendors: `FakeOpenAIRealtime` (GA events at
`/v1/realtime?model=…`, Bearer key; `beta=True` + `/openai/realtime?deployment=…` with an
`api-key` header for Azure) and `FakeGeminiLive` (`BidiGenerateContent`, `x-goog-api-key`).

Both are real WebSocket servers on 127.0.0.1 that check every client message against the
vendor's schema (`realtime_schemas`), run an energy "server VAD" over the appended audio, and
answer each caller turn with the next scripted `Say`/`Call` (default: `Say("I heard you.")`).
With the server VAD switched off (OpenAI `turn_detection: null`; Gemini
`automaticActivityDetection.disabled`) the client ends turns as the vendors require:
`input_audio_buffer.commit` + `response.create`, `response.cancel` (OpenAI), or `activityStart`
/ `activityEnd` (Gemini, whose `activityStart` interrupts a reply); a misplaced one is answered
as the vendor answers it (an `error` event, or close 1007) and recorded:

    with FakeOpenAIRealtime() as fake:
        fake.replies.extend([Call("get_weather", {"city": "Paris"}), Say("It is sunny.")])
        ...
        fake.violations      # schema errors seen (a test asserts it stays empty)
        fake.truncations     # (item_id, audio_end_ms) the client asked for
        fake.turn_signals    # commit / response.create / response.cancel / activityStart / …
        fake.errors          # error codes the fake answered with (OpenAI)
        fake.text_edits      # (deleted item, heard text re-added) for cut text replies

A session set up for text output (OpenAI `output_modalities: ["text"]`, beta `modalities:
["text"]`; Gemini `responseModalities: ["TEXT"]`) is answered in text: `response.output_text.
delta` / `.done` (beta `response.text.…`), or Gemini `modelTurn.parts[].text`, one word a
message. Gemini's server VAD then also transcribes the caller's first word as soon as it hears
them start (the Live API streams input transcription while the caller speaks).
"""

from __future__ import annotations

import abc
import asyncio
import base64
import itertools
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tests.fakes.realtime_schemas import GEMINI_CLIENT, openai_client_events, violation
from tests.fakes.vendor_base import (
    FakeVendor,
    Recorded,
    UvicornServer,
    WsServer,
    refuse,
    tone,
    watch_close,
)

GEMINI_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"


@dataclass
class Say:
    text: str


@dataclass
class Call:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


Reply = Say | Call


def loud(pcm: np.ndarray, threshold: float = 500.0, rate: int = 16000) -> bool:
    """Whether any 20 ms frame of `pcm` is speech for the energy VAD."""
    step = max(1, rate // 50)
    for i in range(0, len(pcm) - step + 1, step):
        frame = pcm[i:i + step].astype(np.float64)
        if float(np.sqrt(np.mean(frame ** 2))) > threshold:
            return True
    return False


class EnergyVad:
    """Speech = 20 ms frames louder than `threshold`; a turn ends after `silence_ms` quiet."""

    def __init__(self, rate: int, threshold: float = 500.0, silence_ms: int = 300) -> None:
        self.rate = rate
        self.threshold = threshold
        self.silence_ms = silence_ms
        self.total_ms = 0.0
        self.speaking = False
        self.quiet_ms = 0.0
        self._buf = np.zeros(0, dtype=np.int16)

    def feed(self, pcm: np.ndarray) -> list[tuple[str, int]]:
        """("started"|"stopped", audio ms) transitions found in `pcm`."""
        out: list[tuple[str, int]] = []
        self._buf = np.concatenate([self._buf, pcm])
        step = self.rate // 50
        while len(self._buf) >= step:
            frame, self._buf = self._buf[:step], self._buf[step:]
            loud = float(np.sqrt(np.mean(frame.astype(np.float64) ** 2))) > self.threshold
            self.total_ms += 20
            if loud and not self.speaking:
                self.speaking = True
                out.append(("started", int(self.total_ms - 20)))
            if self.speaking:
                self.quiet_ms = 0 if loud else self.quiet_ms + 20
                if self.quiet_ms >= self.silence_ms:
                    self.speaking = False
                    out.append(("stopped", int(self.total_ms - self.quiet_ms)))
        return out


class _S2SFake(FakeVendor):
    in_rate = 24000
    out_rate = 24000

    def __init__(self, *, ms_per_char: float = 60.0, chunk_ms: int = 100,
                 caller_text: str = "Hello there.", **kw: Any) -> None:
        super().__init__(**kw)
        self.ms_per_char = ms_per_char
        self.chunk_ms = chunk_ms
        self.caller_text = caller_text
        self.replies: deque[Reply] = deque()
        # What an unscripted turn is answered with, and the model's think time before its
        # first output (bench/s2s.py models a vendor's latency with it).
        self.default_reply = "I heard you."
        self.reply_delay_s = 0.0
        self.violations: list[str] = []
        self.truncations: list[tuple[str, int]] = []
        self.tool_outputs: list[tuple[str, Any]] = []
        # Client turn-taking messages in order (with the server VAD off).
        self.turn_signals: list[str] = []
        self.errors: list[str] = []
        self.text_edits: list[tuple[str, str]] = []
        # The last session's output modality, as its setup asked ("audio" or "text").
        self.output = "audio"
        # Set: refuse the session setup with this error message.
        self.refuse_setup: str | None = None
        # Quiet that ends a caller turn for the fake's energy VAD.
        self.vad_silence_ms = 300
        self._ws: WsServer | None = None
        self._http: UvicornServer | None = None
        self._ids = itertools.count(1)

    def _servers(self) -> list[UvicornServer | WsServer]:
        if self._ws is None:
            self._ws = WsServer(self._session, self._check)
        return [self._ws]

    @property
    def url(self) -> str:
        assert self._ws is not None, "start() the fake first"
        return f"ws://127.0.0.1:{self._ws.port}"

    def reset(self) -> None:
        super().reset()
        self.replies.clear()
        self.violations.clear()
        self.truncations.clear()
        self.tool_outputs.clear()
        self.turn_signals.clear()
        self.errors.clear()
        self.text_edits.clear()
        self.output = "audio"
        self.refuse_setup = None

    def next_reply(self) -> Reply:
        return self.replies.popleft() if self.replies else Say(self.default_reply)

    def speech(self, text: str) -> list[np.ndarray]:
        n = max(1, int(len(text) * self.ms_per_char * self.out_rate / 1000))
        pcm = tone(n, self.out_rate)
        step = self.out_rate * self.chunk_ms // 1000
        return [pcm[i:i + step] for i in range(0, n, step)]

    @abc.abstractmethod
    def _check(self, connection: Any, request: Any) -> Any:
        """The vendor's upgrade checks (path, auth); a refusal response or None."""

    @abc.abstractmethod
    async def _session(self, ws: Any) -> None:
        """One accepted vendor session, speaking the vendor's protocol."""


class FakeOpenAIRealtime(_S2SFake):
    thread_name = "fake-openai-realtime"

    def __init__(self, *, beta: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.beta = beta
        self.schemas = openai_client_events(ga=not beta)

    def _check(self, connection: Any, request: Any) -> Any:
        rec = self._record_upgrade(connection, "realtime")
        if self.beta:
            ok_path = rec.path == "/openai/realtime" and rec.q("deployment") \
                and rec.q("api-version")
            key = rec.headers.get("api-key")
        else:
            ok_path = rec.path == "/v1/realtime" and rec.q("model")
            auth = rec.headers.get("authorization", "")
            key = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        if not ok_path:
            return refuse(rec, 404, {"error": {"message": "Not found", "code": "not_found"}})
        if not self.key_ok(key):
            return refuse(rec, 401, {"error": {"message": "Incorrect API key provided.",
                                               "type": "invalid_request_error",
                                               "code": "invalid_api_key"}})
        return None

    async def _session(self, ws: Any) -> None:
        rec: Recorded = ws.fake_rec
        watch_close(ws, rec)
        st = _OpenAIState(self, ws, rec)
        await st.send({"type": "session.created", "session": {"id": "sess_fake"}})
        async for raw in ws:
            msg = json.loads(raw)
            rec.messages.append(msg)
            await st.handle(msg)
        if st.reply_task is not None:
            st.reply_task.cancel()


class _OpenAIState:
    def __init__(self, fake: FakeOpenAIRealtime, ws: Any, rec: Recorded) -> None:
        self.fake = fake
        self.ws = ws
        self.rec = rec
        self.vad = EnergyVad(fake.in_rate, silence_ms=fake.vad_silence_ms)
        self.configured = False
        # session.update's turn_detection: null switches the server VAD off (the default is on).
        self.server_vad = True
        self.buffer: list[np.ndarray] = []  # appended audio not yet committed
        self.items: dict[str, int] = {}  # assistant audio item id -> audio ms sent
        self.text_items: set[str] = set()  # assistant text items (output text)
        self.calls: set[str] = set()
        self.reply_task: asyncio.Task[None] | None = None
        self.gen = fake._ids

    async def send(self, event: dict[str, Any]) -> None:
        event.setdefault("event_id", f"event_{next(self.gen)}")
        await self.ws.send(json.dumps(event))

    async def error(self, message: str, code: str, event_id: Any = None) -> None:
        self.fake.errors.append(code)
        await self.send({"type": "error", "error": {"type": "invalid_request_error",
                                                     "code": code, "message": message,
                                                     "event_id": event_id}})

    async def handle(self, msg: dict[str, Any]) -> None:
        t = msg.get("type")
        schema = self.fake.schemas.get(str(t))
        if schema is None:
            self.fake.violations.append(f"unknown client event {t!r}")
            await self.error(f"Invalid value: '{t}'.", "invalid_value")
            return
        bad = violation(schema, msg)
        if bad is not None:
            self.fake.violations.append(f"{t}: {bad}")
            await self.error(bad, "invalid_value", msg.get("event_id"))
            return
        if t == "session.update":
            if self.fake.refuse_setup:
                await self.error(self.fake.refuse_setup, "invalid_model")
                return
            self.configured = True
            session = msg["session"]
            holder = session if self.fake.beta else (session.get("audio") or {}).get("input", {})
            if "turn_detection" in holder:
                self.server_vad = holder["turn_detection"] is not None
            modalities = session.get("modalities" if self.fake.beta else "output_modalities")
            if modalities is not None:
                self.fake.output = "text" if "audio" not in modalities else "audio"
            await self.send({"type": "session.updated", "session": session})
        elif t == "input_audio_buffer.append":
            pcm = np.frombuffer(base64.b64decode(msg["audio"]), dtype="<i2")
            self.rec.audio_bytes += pcm.nbytes
            if not self.server_vad:
                self.buffer.append(pcm)
                return
            for what, ms in self.vad.feed(pcm):
                await self.on_vad(what, ms)
        elif t == "input_audio_buffer.commit":
            await self.commit()
        elif t == "response.create":
            self.fake.turn_signals.append(t)
            if self.reply_task is not None and not self.reply_task.done():
                await self.error("Conversation already has an active response in progress",
                                 "conversation_already_has_active_response")
                return
            self.respond()
        elif t == "response.cancel":
            self.fake.turn_signals.append(t)
            if self.reply_task is None or self.reply_task.done():
                await self.error("Cancellation failed: no active response found",
                                 "response_cancel_not_active")
                return
            self.reply_task.cancel()
        elif t == "conversation.item.truncate":
            sent = self.items.get(msg["item_id"])
            if sent is None:
                await self.error("Item not found", "item_truncate_invalid_item_id")
            elif msg["audio_end_ms"] > sent:
                self.fake.violations.append(
                    f"truncate audio_end_ms {msg['audio_end_ms']} > item audio {sent}")
                await self.error("audio_end_ms is longer than the audio",
                                 "invalid_value")
            else:
                self.fake.truncations.append((msg["item_id"], msg["audio_end_ms"]))
                await self.send({"type": "conversation.item.truncated",
                                 "item_id": msg["item_id"], "content_index": 0,
                                 "audio_end_ms": msg["audio_end_ms"]})
        elif t == "conversation.item.delete":
            if msg["item_id"] not in self.text_items:
                await self.error(f"Item with item_id not found: {msg['item_id']}",
                                 "item_delete_invalid_item_id")
                return
            self.text_items.discard(msg["item_id"])
            self.fake.text_edits.append((msg["item_id"], ""))
            await self.send({"type": "conversation.item.deleted", "item_id": msg["item_id"]})
        elif t == "conversation.item.create":
            item = msg["item"]
            if item["type"] == "function_call_output":
                if item["call_id"] not in self.calls:
                    self.fake.violations.append(f"unknown call_id {item['call_id']}")
                self.fake.tool_outputs.append((item["call_id"], item["output"]))
            elif item["role"] == "assistant" and self.fake.text_edits \
                    and self.fake.text_edits[-1][1] == "":
                deleted, _ = self.fake.text_edits[-1]
                self.fake.text_edits[-1] = (deleted, item["content"][0].get("text", ""))

    async def commit(self) -> None:
        self.fake.turn_signals.append("input_audio_buffer.commit")
        pcm = np.concatenate(self.buffer) if self.buffer else np.zeros(0, dtype=np.int16)
        self.buffer.clear()
        ms = len(pcm) * 1000 // self.fake.in_rate
        if ms < 100:
            await self.error("Error committing input audio buffer: buffer too small. Expected "
                             f"at least 100ms of audio, but buffer only has {ms}ms of audio.",
                             "input_audio_buffer_commit_empty")
            return
        item = f"item_{next(self.gen)}"
        await self.send({"type": "input_audio_buffer.committed", "previous_item_id": None,
                         "item_id": item})
        text = self.fake.caller_text if loud(pcm, rate=self.fake.in_rate) else ""
        await self.send({"type": "conversation.item.input_audio_transcription.completed",
                         "item_id": item, "content_index": 0, "transcript": text})

    async def on_vad(self, what: str, ms: int) -> None:
        if what == "started":
            if self.reply_task is not None and not self.reply_task.done():
                self.reply_task.cancel()
            await self.send({"type": "input_audio_buffer.speech_started",
                             "audio_start_ms": ms, "item_id": "item_in"})
            return
        await self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": ms,
                         "item_id": "item_in"})
        await self.send({"type": "conversation.item.input_audio_transcription.completed",
                         "item_id": "item_in", "content_index": 0,
                         "transcript": self.fake.caller_text})
        self.respond()

    def respond(self) -> None:
        if self.reply_task is not None and not self.reply_task.done():
            return
        self.reply_task = asyncio.create_task(self.reply(self.fake.next_reply()))

    async def reply(self, reply: Reply) -> None:
        beta = self.fake.beta
        rid = f"resp_{next(self.gen)}"
        item = f"item_{next(self.gen)}"
        usage = {"total_tokens": 0, "input_tokens": 120, "output_tokens": 60,
                 "input_token_details": {"text_tokens": 100, "audio_tokens": 20},
                 "output_token_details": {"text_tokens": 15, "audio_tokens": 45}}
        await self.send({"type": "response.created", "response": {"id": rid}})
        status = "completed"
        try:
            if self.fake.reply_delay_s:
                await asyncio.sleep(self.fake.reply_delay_s)
            if isinstance(reply, Call):
                call_id = f"call_{next(self.gen)}"
                self.calls.add(call_id)
                await self.send({"type": "response.function_call_arguments.done",
                                 "response_id": rid, "item_id": item, "output_index": 0,
                                 "call_id": call_id, "name": reply.name,
                                 "arguments": json.dumps(reply.arguments)})
            elif self.fake.output == "text":
                await self.write(rid, item, reply.text)
            else:
                self.items[item] = 0
                audio = "response.audio.delta" if beta else "response.output_audio.delta"
                words = reply.text.split(" ")
                chunks = self.fake.speech(reply.text)
                for i, chunk in enumerate(chunks):
                    if i < len(words):
                        await self.send({
                            "type": ("response.audio_transcript.delta" if beta
                                     else "response.output_audio_transcript.delta"),
                            "response_id": rid, "item_id": item, "output_index": 0,
                            "content_index": 0,
                            "delta": words[i] + ("" if i == len(words) - 1 else " ")})
                    await self.send({"type": audio, "response_id": rid, "item_id": item,
                                     "output_index": 0, "content_index": 0,
                                     "delta": base64.b64encode(chunk.astype("<i2").tobytes())
                                     .decode()})
                    self.items[item] += len(chunk) * 1000 // self.fake.out_rate
                    if self.fake.chunk_delay_s:
                        await asyncio.sleep(self.fake.chunk_delay_s)
                rest = " ".join(words[len(chunks):])
                if rest:
                    await self.send({"type": ("response.audio_transcript.delta" if beta else
                                              "response.output_audio_transcript.delta"),
                                     "response_id": rid, "item_id": item, "output_index": 0,
                                     "content_index": 0, "delta": " " + rest})
        except asyncio.CancelledError:
            status = "cancelled"
        if self.fake.output == "text":
            usage["output_token_details"] = {"text_tokens": 15, "audio_tokens": 0}
        await self.send({"type": "response.done", "response": {
            "id": rid, "status": status, "usage": usage}})

    async def write(self, rid: str, item: str, text: str) -> None:
        """A text reply, one word a delta, then the item's `done` with the whole text."""
        kind = "response.text" if self.fake.beta else "response.output_text"
        where = {"response_id": rid, "item_id": item, "output_index": 0, "content_index": 0}
        self.text_items.add(item)
        words = text.split(" ")
        for i, word in enumerate(words):
            await self.send({"type": f"{kind}.delta", **where,
                             "delta": word + ("" if i == len(words) - 1 else " ")})
            if self.fake.chunk_delay_s:
                await asyncio.sleep(self.fake.chunk_delay_s)
        await self.send({"type": f"{kind}.done", **where, "text": text})


class FakeGeminiLive(_S2SFake):
    thread_name = "fake-gemini-live"
    in_rate = 16000

    def _check(self, connection: Any, request: Any) -> Any:
        rec = self._record_upgrade(connection, "live")
        if rec.path != GEMINI_PATH:
            return refuse(rec, 404, {"error": {"code": 404, "message": "Not found",
                                               "status": "NOT_FOUND"}})
        if not self.key_ok(rec.headers.get("x-goog-api-key")):
            return refuse(rec, 403, {"error": {"code": 403, "message": "API key not valid.",
                                               "status": "PERMISSION_DENIED"}})
        return None

    async def _session(self, ws: Any) -> None:
        rec: Recorded = ws.fake_rec
        watch_close(ws, rec)
        vad = EnergyVad(self.in_rate, silence_ms=self.vad_silence_ms)
        task: asyncio.Task[None] | None = None
        calls: dict[str, str] = {}
        set_up = False
        manual = False  # automaticActivityDetection.disabled: the client marks activity
        active = False
        heard_speech = False

        async def send(m: dict[str, Any]) -> None:
            await ws.send(json.dumps(m))

        def respond() -> None:
            nonlocal task
            if task is None or task.done():
                task = asyncio.create_task(self._reply(send, self.next_reply(), calls))

        async for raw in ws:
            msg = json.loads(raw)
            rec.messages.append(msg)
            bad = violation(GEMINI_CLIENT, msg)
            if bad is None and not set_up and "setup" not in msg:
                bad = "the first message must be setup"
            if bad is not None:
                self.violations.append(bad)
                await ws.close(1007, f"Request contains an invalid argument. {bad}"[:120])
                break
            rt = msg.get("realtimeInput") or {}
            if "activityStart" in rt or "activityEnd" in rt:
                what = "activityStart" if "activityStart" in rt else "activityEnd"
                self.turn_signals.append(what)
                if not manual:
                    bad = f"{what} is only allowed with automatic activity detection disabled"
                elif (what == "activityStart") == active:
                    bad = f"{what} while activity is {'on' if active else 'off'}"
                if bad is not None:
                    self.violations.append(bad)
                    await ws.close(1007, f"Request contains an invalid argument. {bad}"[:120])
                    break
                active = what == "activityStart"
                if active:
                    heard_speech = False
                    # activityHandling's default START_OF_ACTIVITY_INTERRUPTS: a barge-in.
                    if task is not None and not task.done():
                        task.cancel()
                        await send({"serverContent": {"interrupted": True}})
                else:
                    await send({"serverContent": {"inputTranscription": {
                        "text": self.caller_text if heard_speech else ""}}})
                    respond()
                continue
            if "setup" in msg:
                if self.refuse_setup:
                    await ws.close(1008, self.refuse_setup[:120])
                    break
                set_up = True
                detection = ((msg["setup"].get("realtimeInputConfig") or {})
                             .get("automaticActivityDetection") or {})
                manual = detection.get("disabled") is True
                modalities = (msg["setup"].get("generationConfig") or {}).get(
                    "responseModalities") or ["AUDIO"]
                self.output = "text" if modalities == ["TEXT"] else "audio"
                if self.output == "text" and "outputAudioTranscription" in msg["setup"]:
                    self.violations.append("outputAudioTranscription with TEXT responses")
                await send({"setupComplete": {}})
            elif "audio" in rt:
                audio = rt["audio"]
                if audio["mimeType"] != f"audio/pcm;rate={self.in_rate}":
                    self.violations.append(f"audio at {audio['mimeType']}")
                pcm = np.frombuffer(base64.b64decode(audio["data"]), dtype="<i2")
                rec.audio_bytes += pcm.nbytes
                if manual:
                    # turnCoverage's default: only audio inside an activity makes the turn.
                    heard_speech = heard_speech or (active and loud(pcm, rate=self.in_rate))
                    continue
                for what, _ms in vad.feed(pcm):
                    first, _, rest = self.caller_text.partition(" ")
                    if what == "started" and task is not None and not task.done():
                        task.cancel()
                        await send({"serverContent": {"interrupted": True}})
                    if what == "started" and self.output == "text":
                        await send({"serverContent": {"inputTranscription": {"text": first}}})
                    elif what == "stopped":
                        said = " " + rest if self.output == "text" else self.caller_text
                        await send({"serverContent": {"inputTranscription": {"text": said}}})
                        respond()
            elif "clientContent" in msg:
                respond()
            elif "toolResponse" in msg:
                for r in msg["toolResponse"]["functionResponses"]:
                    if calls.get(r["id"]) != r["name"]:
                        self.violations.append(f"unknown function call id {r['id']}")
                    self.tool_outputs.append((r["id"], r["response"]))
                respond()
        if task is not None:
            task.cancel()

    async def _reply(self, send: Any, reply: Reply, calls: dict[str, str]) -> None:
        if self.reply_delay_s:
            await asyncio.sleep(self.reply_delay_s)
        if isinstance(reply, Call):
            call_id = f"fc_{next(self._ids)}"
            calls[call_id] = reply.name
            await send({"toolCall": {"functionCalls": [
                {"id": call_id, "name": reply.name, "args": reply.arguments}]}})
            return
        if self.output == "text":
            words = reply.text.split(" ")
            for i, word in enumerate(words):
                await send({"serverContent": {"modelTurn": {"parts": [
                    {"text": word + ("" if i == len(words) - 1 else " ")}]}}})
                if self.chunk_delay_s:
                    await asyncio.sleep(self.chunk_delay_s)
            await send({"serverContent": {"turnComplete": True}, "usageMetadata": {
                "promptTokenCount": 120, "responseTokenCount": 15, "totalTokenCount": 135,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 100},
                                        {"modality": "AUDIO", "tokenCount": 20}],
                "responseTokensDetails": [{"modality": "TEXT", "tokenCount": 15}]}})
            return
        for chunk in self.speech(reply.text):
            await send({"serverContent": {"modelTurn": {"parts": [{"inlineData": {
                "mimeType": f"audio/pcm;rate={self.out_rate}",
                "data": base64.b64encode(chunk.astype("<i2").tobytes()).decode()}}]}}})
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
        await send({"serverContent": {"outputTranscription": {"text": reply.text}}})
        await send({"serverContent": {"turnComplete": True}, "usageMetadata": {
            "promptTokenCount": 120, "responseTokenCount": 60, "totalTokenCount": 180,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 100},
                                    {"modality": "AUDIO", "tokenCount": 20}],
            "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": 60}]}})
