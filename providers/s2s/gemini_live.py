"""s2s `gemini_live`: Gemini Live API (`BidiGenerateContent`) over WebSocket.

Client messages: `setup` (model, AUDIO response modality, prebuilt voice, system instruction,
function declarations, input/output transcription; with `turn_detection: phonebooth`,
`realtimeInputConfig.automaticActivityDetection.disabled`), `realtimeInput.audio` (PCM16 16 kHz),
`realtimeInput.activityStart` / `activityEnd` around the caller's turn (phonebooth mode),
`clientContent` (the greeting as a text turn) and `toolResponse.functionResponses`. Server
messages: `setupComplete`, `serverContent` (`modelTurn.parts[].inlineData` PCM16 24 kHz,
`inputTranscription`, `outputTranscription`, `interrupted`, `turnComplete`),
`toolCall.functionCalls` and `usageMetadata` (token counts per modality).
The key goes in the `x-goog-api-key` header.

Gemini has no item ids or truncate message: when the caller speaks over it, the server cuts the
reply itself and says so with `interrupted`, so `truncate` has nothing to send; in phonebooth
mode `activityStart` is what interrupts it (the default `activityHandling`), so there is no
cancel message either. Only audio inside an activity makes the caller's turn (the default
`turnCoverage`): between turns the session holds back the last `PREROLL_MS` and sends it right
after `activityStart`, so the syllables the VAD needed to confirm speech are not lost.

`output: text` (hybrid): `responseModalities: ["TEXT"]` (no voice, no output transcription; the
half-cascade Live models take it, the native-audio ones answer in audio only) and the reply is
`modelTurn.parts[].text`. The model writes a reply far faster than the agent's TTS speaks it, so
its server VAD rarely has a reply in progress to interrupt: with `server_vad` the first input
transcription of a caller turn is taken as the caller's start (the barge-in). The Live API has
no way to edit the session's history (no item ids; `clientContent` only appends turns), so a cut
text reply stays whole in the model's memory and what the caller heard is recorded in the turn.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import numpy as np

from providers.base import ProviderError, ToolCall, ToolSpec, Usage
from providers.http import resolve_api_key
from providers.s2s.base import (
    AudioOut,
    InputTranscript,
    Interrupted,
    OutputText,
    OutputTranscript,
    ResponseDone,
    S2SConfig,
    S2SEvent,
    S2SProvider,
    S2SSession,
    SpeechStarted,
)
from providers.s2s.socket import JsonSocket, b64_pcm, pcm_b64

GEMINI_LIVE_URL = ("wss://generativelanguage.googleapis.com/ws/"
                   "google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent")
IN_RATE = 16000
OUT_RATE = 24000
# Audio kept between turns in phonebooth mode: covers the VAD's start hysteresis (start_ms).
PREROLL_MS = 500


class GeminiLiveConfig(S2SConfig):
    model: str = "gemini-live-2.5-flash-preview"
    voice: str | None = "Puck"


def setup_message(cfg: GeminiLiveConfig, instructions: str,
                  tools: list[ToolSpec]) -> dict[str, Any]:
    text = cfg.output == "text"
    gen: dict[str, Any] = {"responseModalities": ["TEXT" if text else "AUDIO"]}
    if cfg.voice and not text:
        gen["speechConfig"] = {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": cfg.voice}}}
    if cfg.temperature is not None:
        gen["temperature"] = cfg.temperature
    model = cfg.model if cfg.model.startswith("models/") else f"models/{cfg.model}"
    setup: dict[str, Any] = {
        "model": model,
        "generationConfig": gen,
        "systemInstruction": {"parts": [{"text": instructions}]},
        "inputAudioTranscription": {},
    }
    if not text:
        setup["outputAudioTranscription"] = {}
    if cfg.turn_detection == "phonebooth":
        setup["realtimeInputConfig"] = {"automaticActivityDetection": {"disabled": True}}
    if tools:
        setup["tools"] = [{"functionDeclarations": [
            {"name": t.name, "description": t.description, "parameters": t.parameters}
            for t in tools]}]
    return {"setup": setup}


def _usage(provider: str, model: str, meta: dict[str, Any]) -> list[Usage]:
    out: list[Usage] = []
    for side, key in (("input", "promptTokensDetails"), ("output", "responseTokensDetails")):
        for d in meta.get(key) or []:
            modality = str(d.get("modality", "")).lower()
            n = d.get("tokenCount")
            if modality in ("audio", "text") and isinstance(n, int | float) and n:
                out.append(Usage(provider, model, f"{side}_{modality}_tokens", float(n)))
    return out


class GeminiSession(S2SSession):
    def __init__(self, sock: JsonSocket, model: str, *, manual: bool = False,
                 text: bool = False) -> None:
        self._sock = sock
        # Text output with server VAD: the caller's first transcribed words are their start.
        self._speech_from_transcript = text and not manual
        self._caller_started = False
        self._model = model
        self._turn = 0
        self._heard_in: list[str] = []
        # Phonebooth mode: audio between activities is held back (the pre-roll).
        self._manual = manual
        self._active = False
        self._preroll: deque[np.ndarray] = deque()
        self._preroll_samples = 0

    def _item(self) -> str:
        return f"turn-{self._turn}"

    def _flush_input(self) -> list[S2SEvent]:
        text = "".join(self._heard_in).strip()
        self._heard_in.clear()
        return [InputTranscript(text)] if text else []

    def parse(self, msg: dict[str, Any]) -> list[S2SEvent]:
        out: list[S2SEvent] = []
        # Usage rides on the message that completes the turn: report it before ResponseDone.
        if isinstance(msg.get("usageMetadata"), dict):
            out += _usage(self._sock.provider, self._model, msg["usageMetadata"])
        sc = msg.get("serverContent")
        if isinstance(sc, dict):
            if isinstance(sc.get("inputTranscription"), dict):
                words = str(sc["inputTranscription"].get("text", ""))
                self._heard_in.append(words)
                if self._speech_from_transcript and words.strip() and not self._caller_started:
                    self._caller_started = True
                    out.append(SpeechStarted(0))
            if sc.get("interrupted"):
                out.append(Interrupted())
                # The cut reply is over: what follows is a new one, whose audio must not be
                # taken for the rest of the cut item (which the host drops).
                self._turn += 1
            turn = sc.get("modelTurn")
            if isinstance(turn, dict):
                out += self._flush_input()
                self._caller_started = False
                for part in turn.get("parts") or []:
                    data = (part.get("inlineData") or {}).get("data")
                    if data:
                        out.append(AudioOut(self._item(), b64_pcm(str(data))))
                    elif isinstance(part.get("text"), str) and not part.get("thought"):
                        out.append(OutputText(self._item(), part["text"]))
            if isinstance(sc.get("outputTranscription"), dict):
                out.append(OutputTranscript(self._item(),
                                            str(sc["outputTranscription"].get("text", ""))))
            if sc.get("turnComplete"):
                out += self._flush_input()
                out.append(ResponseDone("interrupted" if sc.get("interrupted") else "completed"))
                self._turn += 1
        tc = msg.get("toolCall")
        if isinstance(tc, dict):
            for fc in tc.get("functionCalls") or []:
                args = fc.get("args")
                out.append(ToolCall(str(fc.get("id", "")), str(fc.get("name", "")),
                                    args if isinstance(args, dict) else {}))
        return out

    async def send_audio(self, samples: np.ndarray) -> None:
        if self._manual and not self._active:
            self._preroll.append(samples)
            self._preroll_samples += len(samples)
            while self._preroll and \
                    self._preroll_samples - len(self._preroll[0]) >= IN_RATE * PREROLL_MS // 1000:
                self._preroll_samples -= len(self._preroll.popleft())
            return
        await self._send_audio(samples)

    async def _send_audio(self, samples: np.ndarray) -> None:
        await self._sock.send({"realtimeInput": {"audio": {
            "data": pcm_b64(samples), "mimeType": f"audio/pcm;rate={IN_RATE}"}}})

    async def activity_start(self) -> None:
        if not self._manual or self._active:
            return
        self._active = True
        await self._sock.send({"realtimeInput": {"activityStart": {}}})
        held = list(self._preroll)
        self._preroll.clear()
        self._preroll_samples = 0
        if held:
            await self._send_audio(np.concatenate(held))

    async def activity_end(self) -> None:
        if not self._manual or not self._active:
            return
        self._active = False
        await self._sock.send({"realtimeInput": {"activityEnd": {}}})

    async def cancel_response(self) -> None:
        # activityStart already interrupted the reply (activityHandling's default).
        return None

    async def events(self) -> AsyncIterator[S2SEvent]:
        async for msg in self._sock.messages():
            for ev in self.parse(msg):
                yield ev

    async def send_tool_result(self, call: ToolCall, output: str) -> None:
        try:
            result = json.loads(output)
        except ValueError:
            result = output
        # `response` must be an object; a plain value is wrapped.
        response = result if isinstance(result, dict) else {"result": result}
        await self._sock.send({"toolResponse": {"functionResponses": [
            {"id": call.id, "name": call.name, "response": response}]}})

    async def truncate(self, item_id: str, audio_end_ms: int) -> None:
        return None

    async def keep_heard_text(self, item_id: str, heard: str) -> None:
        # No history edit exists in the Live API (see the module docstring).
        return None

    async def respond(self, instructions: str) -> None:
        await self._sock.send({"clientContent": {
            "turns": [{"role": "user", "parts": [{"text": instructions}]}],
            "turnComplete": True}})

    async def aclose(self) -> None:
        await self._sock.close()


class GeminiLive(S2SProvider):
    name: ClassVar[str] = "gemini_live"
    Config: ClassVar[type[GeminiLiveConfig]] = GeminiLiveConfig
    input_rate: ClassVar[int] = IN_RATE
    output_rate: ClassVar[int] = OUT_RATE
    config: GeminiLiveConfig

    async def connect(self, instructions: str, tools: list[ToolSpec]) -> S2SSession:
        key = await resolve_api_key(self.ctx, self.config.api_key, self.name)
        sock = JsonSocket(self.name)
        await sock.open(self.config.base_url or GEMINI_LIVE_URL, {"x-goog-api-key": key or ""},
                        self.config.retry_policy(), self.config.connect_timeout_s)
        try:
            await sock.send(setup_message(self.config, instructions, tools))
            async for msg in sock.messages():
                if "setupComplete" in msg:
                    return GeminiSession(sock, self.config.model,
                                         manual=self.config.turn_detection == "phonebooth",
                                         text=self.config.output == "text")
            raise ProviderError(self.name, "session closed during setup")
        except BaseException:
            await sock.close()
            raise
