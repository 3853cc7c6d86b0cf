"""A local fake of ElevenLabs' stream-input WebSocket
(`ws_base_url` + `/v1/text-to-speech/{voice_id}/stream-input`, endpoint name "stream-input").

Protocol as documented: query `model_id`, `output_format` (pcm_16000/22050/24000/44100 or
ulaw_8000; the real default mp3 is refused here), `auto_mode`…; the key in the `xi-api-key`
header or in the first message (`xi_api_key` / `xi-api-key`). The first message must be
`{"text": " "}` (optionally `voice_settings`, `generation_config`); text accumulates until
`flush: true`, `try_trigger_generation`, a sentence end in auto_mode, or the closing
`{"text": ""}`; each generation is streamed as `{"audio": base64, "isFinal": null,
"normalizedAlignment": {...}, "alignment": {...}}` messages, and after the closing message
`{"isFinal": true}` is sent and the socket closed (1000). Audio is a phase-continuous tone,
`ms_per_char` per character: `expected_audio(text, output_format)` is what a full stream holds.

Errors follow the service: `{"message", "error", "code": 1008}` then a 1008 close with the
message as reason (bad key, bad first message, input timeout after `inactivity_timeout_s`).
Failures: "status" (refused upgrade), "drop" / "close" after `after` audio messages, "hang"
(read everything, never answer), "error_event" (error message + 1008 close before audio).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
from typing import Any

import numpy as np

from pipelines.audio.g711 import ulaw_encode
from tests.fakes.vendor_base import (
    Recorded,
    WsTtsVendor,
    cut,
    refuse,
    watch_close,
)

_FORMATS = {"pcm_16000": ("pcm", 16000), "pcm_22050": ("pcm", 22050),
            "pcm_24000": ("pcm", 24000), "pcm_44100": ("pcm", 44100),
            "ulaw_8000": ("ulaw", 8000)}
_PATH = re.compile(r"/v1/text-to-speech/([^/]+)/stream-input")


class FakeElevenLabs(WsTtsVendor):
    thread_name = "fake-elevenlabs"

    def __init__(self, *, inactivity_timeout_s: float = 20.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.inactivity_timeout_s = inactivity_timeout_s

    def expected_audio(self, text: str, output_format: str = "pcm_16000") -> np.ndarray:
        """The audio a complete stream of `text` carries (int16 PCM, or μ-law codes as uint8)."""
        kind, rate = _FORMATS[output_format]
        pcm = self._audio(text, rate, 0)
        return np.frombuffer(ulaw_encode(pcm), np.uint8) if kind == "ulaw" else pcm

    def _check(self, connection: Any, request: Any) -> Any:
        rec = self._record_upgrade(connection, "stream-input")
        if _PATH.fullmatch(rec.path) is None:
            return refuse(rec, 404, {"detail": {"status": "not_found", "message": "Not Found"}})
        failure = self.failures.take("stream-input")
        connection.fake_failure = failure
        if failure is not None and failure.kind == "status":
            return refuse(rec, failure.status, {"detail": {"status": failure.code or "error",
                                                           "message": failure.message}},
                          failure.retry_headers())
        fmt = rec.q("output_format", "mp3_44100")
        if fmt not in _FORMATS:
            return refuse(rec, 400, {"detail": {"status": "invalid_output_format",
                                                "message": f"unsupported output_format {fmt}"}})
        return None

    async def _fail(self, ws: Any, rec: Recorded, message: str, error: str) -> None:
        rec.note("error", error)
        await ws.send(json.dumps({"message": message, "error": error, "code": 1008}))
        await ws.close(1008, message[:120])

    async def _handler(self, ws: Any) -> None:
        rec: Recorded = ws.fake_rec
        failure = ws.fake_failure
        watcher = watch_close(ws, rec)
        kind, rate = _FORMATS[rec.q("output_format") or "pcm_16000"]
        auto_mode = rec.q("auto_mode") == "true"
        header_key = rec.headers.get("xi-api-key")
        buffered = ""
        sample_pos = 0
        sent_audio = 0
        first = True
        try:
            while True:
                try:
                    raw = await asyncio.wait_for(ws.recv(), self.inactivity_timeout_s)
                except TimeoutError:
                    await self._fail(ws, rec, "Have not received a new text input within the "
                                     f"timeout of {self.inactivity_timeout_s:g} seconds. Streaming"
                                     " input terminated. Please make sure to either feed the input"
                                     " in the timely manner, or to send the end of input text "
                                     '(empty string "") when done.', "input_timeout_exceeded")
                    return
                try:
                    msg = json.loads(raw)
                    text = msg["text"]
                except (ValueError, KeyError, TypeError):
                    await self._fail(ws, rec, "Could not parse input message, make sure it is a "
                                     "json and follows the schema outlined in protocol.",
                                     "invalid_input_message")
                    return
                rec.messages.append(msg)
                if failure is not None and failure.kind == "hang":
                    continue
                if first:
                    first = False
                    key = header_key or msg.get("xi_api_key") or msg.get("xi-api-key")
                    if not self.key_ok(key):
                        await self._fail(ws, rec, "Invalid API key", "invalid_api_key")
                        return
                    if text != " ":
                        await self._fail(ws, rec, "The first message must be a single space.",
                                         "invalid_input_message")
                        return
                    if failure is not None and failure.kind == "error_event":
                        await self._fail(ws, rec, failure.message, failure.code or "error")
                        return
                    continue
                closing = text == ""
                buffered += text
                trigger = (closing or msg.get("flush") or msg.get("try_trigger_generation")
                           or (auto_mode and re.search(r"[.!?]\s*$", buffered)))
                if not trigger or not buffered.strip():
                    if closing:
                        break
                    continue
                audio = self._audio(buffered.strip(), rate, sample_pos)
                sample_pos += audio.size
                payload = ulaw_encode(audio) if kind == "ulaw" else audio.astype("<i2").tobytes()
                step = max(1, rate * (1 if kind == "ulaw" else 2) * self.chunk_ms // 1000)
                chars = list(buffered)
                buffered = ""
                for i in range(0, len(payload), step):
                    if (failure is not None and sent_audio >= failure.after
                            and await cut(ws, rec, failure)):
                        return
                    if self.chunk_delay_s and sent_audio:
                        await asyncio.sleep(self.chunk_delay_s)
                    elif self.first_byte_delay_s and not sent_audio:
                        await asyncio.sleep(self.first_byte_delay_s)
                    out: dict[str, Any] = {"audio": base64.b64encode(payload[i:i + step]).decode(),
                                           "isFinal": None}
                    if i == 0:
                        align = {"chars": chars,
                                 "charStartTimesMs": [k * int(self.ms_per_char)
                                                      for k in range(len(chars))],
                                 "charDurationsMs": [int(self.ms_per_char)] * len(chars)}
                        out["normalizedAlignment"] = align
                        out["alignment"] = align
                    await ws.send(json.dumps(out))
                    sent_audio += 1
                if closing:
                    break
            await ws.send(json.dumps({"isFinal": True}))
            await ws.close(1000)
            rec.completed = True
        except Exception as exc:  # the client went away
            rec.note("client-gone", type(exc).__name__)
        finally:
            with contextlib.suppress(Exception):
                await ws.close()
            await watcher
