"""A local fake of Deepgram: live STT over WebSocket and Aura TTS over streaming REST.

- STT (`ws_base_url` + `/v1/listen`, endpoint name "listen"): `Authorization: Token KEY`
  (a wrong key refuses the upgrade with 401, a `dg-error` header and
  `{"err_code": "INVALID_AUTH", "err_msg": ...}`). Binary frames are audio in the `encoding` /
  `sample_rate` of the query. While speech (energy above a threshold) arrives, interim `Results`
  reveal the current scripted utterance word by word, every `interim_every_s` of audio. `Finalize`
  answers with a final `Results` marked `from_finalize` (the utterance, or "" if only silence
  came; nothing at all if no audio came since the last final — as the real service may do;
  `respond_to_finalize = False` ignores Finalize altogether; `finalize_delay_s` sends that final
  that much later, like the real service's finalisation time, without pausing the audio intake).
  Control messages are recorded in
  `rec.messages` and `rec.events`; `CloseStream` gets a last final (if audio is pending), a
  `Metadata` message and a 1000 close. No audio or KeepAlive for `idle_timeout_s`
  closes with 1011 "NET-0001". Failures: "status" (refused upgrade), "drop" (abort after `after`
  audio frames), "close" (close code/reason after `after` audio frames), "hang" (swallow all).
- TTS (`http_base_url` + `/v1/speak`, endpoint "speak"): query `model`, `encoding`
  (linear16|mulaw), `sample_rate`, `container=none`; JSON `{"text"}`; streams a tone
  (`speak_audio(text, encoding, rate)` is the exact full body). Errors:
  `{"err_code", "err_msg", "request_id"}`.

Script utterances with `queue_transcript("...")` (else `default_transcript`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import deque
from typing import Any

import numpy as np

from pipelines.audio.g711 import ulaw_decode, ulaw_encode
from tests.fakes.vendor_base import (
    Failure,
    FakeVendor,
    HttpExchange,
    Recorded,
    Render,
    UvicornServer,
    WsServer,
    cut,
    refuse,
    speech,
    watch_close,
)

SPEECH_RMS = 300.0


class FakeDeepgram(FakeVendor):
    thread_name = "fake-deepgram"

    def __init__(self, *, default_transcript: str = "hello world",
                 interim_every_s: float = 0.2, idle_timeout_s: float = 10.0,
                 tts_ms_per_char: float = 40.0, tts_chunk_ms: int = 100,
                 render: Render | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.render = render
        self.default_transcript = default_transcript
        # False: Finalize is silently ignored (a case clients must survive).
        self.respond_to_finalize = True
        # Seconds between Finalize and its final (benchmarks model the vendor's latency).
        self.finalize_delay_s = 0.0
        self.interim_every_s = interim_every_s
        self.idle_timeout_s = idle_timeout_s
        self.tts_ms_per_char = tts_ms_per_char
        self.tts_chunk_ms = tts_chunk_ms
        self.transcripts: deque[str] = deque()
        self._ws: WsServer | None = None
        self._http: UvicornServer | None = None

    def _servers(self) -> list[UvicornServer | WsServer]:
        if self._ws is None:
            self._ws = WsServer(self._listen, self._check_listen)
            self._http = UvicornServer(self._app)
        assert self._http is not None
        return [self._ws, self._http]

    @property
    def ws_base_url(self) -> str:
        assert self._ws is not None, "start() the fake first"
        return f"ws://127.0.0.1:{self._ws.port}"

    @property
    def http_base_url(self) -> str:
        assert self._http is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._http.port}"

    def reset(self) -> None:
        super().reset()
        self.transcripts.clear()
        self.respond_to_finalize = True

    def queue_transcript(self, *texts: str) -> None:
        self.transcripts.extend(texts)

    def speak_audio(self, text: str, encoding: str, sample_rate: int) -> bytes:
        pcm = speech(self.render, text, sample_rate, self.tts_ms_per_char)
        return ulaw_encode(pcm) if encoding == "mulaw" else pcm.astype("<i2").tobytes()

    # -- STT ----------------------------------------------------------------------------------

    def _error_body(self, code: str, msg: str) -> dict[str, Any]:
        return {"err_code": code, "err_msg": msg, "request_id": str(uuid.uuid4())}

    def _check_listen(self, connection: Any, request: Any) -> Any:
        rec = self._record_upgrade(connection, "listen")
        if rec.path != "/v1/listen":
            return refuse(rec, 404, self._error_body("NOT_FOUND", "Not found"))
        auth = rec.headers.get("authorization", "")
        if not (auth.startswith("Token ") and self.key_ok(auth[len("Token "):])):
            msg = "Invalid credentials."
            return refuse(rec, 401, self._error_body("INVALID_AUTH", msg), {"dg-error": msg})
        failure = self.failures.take("listen")
        connection.fake_failure = failure
        if failure is not None and failure.kind == "status":
            return refuse(rec, failure.status,
                          self._error_body(failure.code or "ERROR", failure.message),
                          {"dg-error": failure.message, **failure.retry_headers()})
        encoding = rec.q("encoding", "linear16")
        if encoding not in ("linear16", "mulaw") or not (rec.q("sample_rate") or "").isdigit():
            return refuse(rec, 400, self._error_body("Bad Request",
                                                     "unsupported encoding or sample_rate"))
        return None

    async def _listen(self, ws: Any) -> None:
        rec: Recorded = ws.fake_rec
        failure: Failure | None = ws.fake_failure
        watcher = watch_close(ws, rec)
        encoding = rec.q("encoding", "linear16")
        rate = int(rec.q("sample_rate") or 16000)
        bps = rate * (1 if encoding == "mulaw" else 2)
        interim = rec.q("interim_results", "false") == "true"
        st = _SttState(rate)
        frames = 0
        delayed: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    msg = await asyncio.wait_for(ws.recv(), self.idle_timeout_s)
                except TimeoutError:
                    rec.note("idle-timeout")
                    await ws.close(1011, "NET-0001")
                    break
                if failure is not None and failure.kind == "hang":
                    continue
                if isinstance(msg, bytes):
                    frames += 1
                    rec.messages.append(len(msg))
                    rec.audio_bytes += len(msg)
                    rec.audio += msg
                    if (failure is not None and frames > failure.after
                            and await cut(ws, rec, failure)):
                        return
                    samples = (ulaw_decode(msg) if encoding == "mulaw"
                               else np.frombuffer(msg[: len(msg) // 2 * 2], dtype="<i2"))
                    st.add(samples, len(msg) / bps)
                    if interim and st.speech_s > 0 and st.since_interim >= self.interim_every_s:
                        st.since_interim = 0.0
                        await ws.send(json.dumps(self._results(st, final=False)))
                        rec.note("interim-sent")
                    continue
                try:
                    ctrl = json.loads(msg)
                except ValueError:
                    rec.messages.append(msg)
                    continue
                rec.messages.append(ctrl)
                kind = ctrl.get("type")
                rec.note(kind)
                if kind == "Finalize":
                    if st.pending_s > 0 and self.respond_to_finalize:
                        final = json.dumps(self._results(st, final=True, from_finalize=True))
                        if self.finalize_delay_s > 0:
                            delayed.add(asyncio.create_task(
                                _send_later(ws, final, self.finalize_delay_s)))
                        else:
                            await ws.send(final)
                elif kind == "CloseStream":
                    if st.pending_s > 0:
                        await ws.send(json.dumps(self._results(st, final=True)))
                    await ws.send(json.dumps({
                        "type": "Metadata", "transaction_key": "deprecated",
                        "request_id": str(uuid.uuid4()), "sha256": "0" * 64,
                        "created": "2026-01-01T00:00:00.000Z", "duration": st.total_s,
                        "channels": 1}))
                    await ws.close(1000)
                    rec.completed = True
                    break
        except Exception as exc:  # the client went away
            rec.note("client-gone", type(exc).__name__)
        finally:
            for t in delayed:
                t.cancel()
            with contextlib.suppress(Exception):
                await ws.close()
            await watcher

    def _utterance(self, final: bool) -> str:
        # Interims only peek: audio replayed on a new connection is recognised as the same words.
        if not self.transcripts:
            return self.default_transcript
        return self.transcripts.popleft() if final else self.transcripts[0]

    def _results(self, st: _SttState, *, final: bool, from_finalize: bool = False
                 ) -> dict[str, Any]:
        if st.speech_s > 0:
            words = self._utterance(final).split()
            if not final:
                shown = max(1, min(len(words) - 1, int(st.speech_s / 0.3)))
                words = words[:shown]
            text = " ".join(words)
        else:
            text = ""
        start, duration = st.final_end_s, st.pending_s
        msg = {
            "type": "Results", "channel_index": [0, 1], "duration": round(duration, 3),
            "start": round(start, 3), "is_final": final, "speech_final": final,
            "from_finalize": from_finalize,
            "channel": {"alternatives": [{
                "transcript": text, "confidence": 0.98 if text else 0.0,
                "words": [{"word": w.lower().strip(".,?!"), "start": start, "end": start + duration,
                           "confidence": 0.98, "punctuated_word": w} for w in text.split()]}]},
            "metadata": {"request_id": "fake", "model_uuid": "fake",
                         "model_info": {"name": "fake-nova", "version": "0", "arch": "fake"}},
        }
        if final:
            st.final_end_s += duration
            st.pending_s = 0.0
            st.speech_s = 0.0
        return msg

    # -- TTS ----------------------------------------------------------------------------------

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        rec = await self._record_http("speak", scope, receive)
        ex = HttpExchange(scope, receive, send, rec)
        if scope["path"] != "/v1/speak":
            await ex.json_response(404, self._error_body("NOT_FOUND", "Not found"))
            return
        auth = rec.headers.get("authorization", "")
        if not (auth.startswith("Token ") and self.key_ok(auth[len("Token "):])):
            await ex.json_response(401, self._error_body(
                "INVALID_AUTH", "Invalid credentials."))
            return
        failure = self.failures.take("speak")
        if await ex.scripted(failure, lambda f: self._error_body(f.code or "ERROR", f.message)):
            return
        try:
            text = json.loads(rec.body)["text"]
            rec.json = {"text": text}
        except (ValueError, KeyError, TypeError):
            await ex.json_response(400, self._error_body(
                "INVALID_QUERY", "Request body must be JSON with a 'text' field"))
            return
        encoding = rec.q("encoding", "mp3")
        rate = int(rec.q("sample_rate") or 24000)
        if encoding not in ("linear16", "mulaw") or rec.q("container") != "none":
            await ex.json_response(400, self._error_body(
                "UNSUPPORTED_AUDIO_FORMAT", "this fake streams linear16/mulaw with container=none"))
            return
        audio = self.speak_audio(text, encoding, rate)
        bytes_per_sample = 1 if encoding == "mulaw" else 2
        step = rate * bytes_per_sample * self.tts_chunk_ms // 1000 + 1
        content_type = "audio/mulaw" if encoding == "mulaw" else "audio/l16"
        await ex.stream(200, {"content-type": content_type, "dg-char-count": str(len(text)),
                              "dg-request-id": str(uuid.uuid4())},
                        self._paced(audio, step, failure))


async def _send_later(ws: Any, message: str, delay_s: float) -> None:
    await asyncio.sleep(delay_s)
    with contextlib.suppress(Exception):  # the client may have gone meanwhile
        await ws.send(message)


class _SttState:
    """Per-connection recognition state."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.total_s = 0.0
        self.pending_s = 0.0  # audio since the last final
        self.speech_s = 0.0  # loud audio since the last final
        self.final_end_s = 0.0
        self.since_interim = 0.0

    def add(self, samples: np.ndarray, seconds: float) -> None:
        self.total_s += seconds
        self.pending_s += seconds
        if samples.size and float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) > SPEECH_RMS:
            self.speech_s += seconds
            self.since_interim += seconds
