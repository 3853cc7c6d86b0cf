"""STT `deepgram`: Deepgram live transcription over one WebSocket per call.

Wire: `wss://api.deepgram.com/v1/listen?model=…&language=…&encoding=linear16|mulaw&
sample_rate=…&channels=1&interim_results=…&endpointing=…&smart_format=…` with
`Authorization: Token KEY`. Audio goes up as binary frames; control messages are JSON text:
`KeepAlive` (sent after `keepalive_interval_s` without audio, since Deepgram closes an idle
stream after ~10 s with NET-0001), `Finalize` (our end of turn: Deepgram returns the pending
audio as a final result marked `from_finalize`) and `CloseStream` (on close). Server messages:
`Results` (interim / final, with start and duration), `Metadata`, `SpeechStarted`,
`UtteranceEnd`; errors arrive as close frames (e.g. 1011 NET-0001) or refused upgrades with a
`{"err_code", "err_msg"}` body.

Input format (`encoding`, `FormatChoosingSTT`): with "auto" a μ-law phone leg goes up as the
carrier's own μ-law bytes at 8 kHz (untouched: a quarter of the bytes of 16 kHz linear16, and
no resampling) and any other leg as linear16 at its own rate; "linear16" / "mulaw" force one.

Resilience lives in one place, `providers.stt_recovery`: a dropped socket fails this stream (a
retryable ProviderError) and the recovery layer reopens it, or fails over, replaying the audio of
the caller's current utterance from its own buffer. This adapter keeps no copy of the audio.

Each final `Transcript` covers a new stretch of audio; a turn's text is the concatenation of the
finals since the turn began. After `flush()` exactly one final marks the end of the turn: the
`from_finalize` result (possibly empty), an immediate empty final when nothing is pending, or,
if Deepgram stays silent for `finalize_timeout_s`, the last interim text promoted to final —
unless the server has sent nothing at all since the Finalize while over a second of audio awaits
a final: that connection is hung, and the stream fails (a retryable `timeout` ProviderError) so
a fallback STT can take the turn over, replaying its audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal
from urllib.parse import urlencode

import numpy as np
from pydantic import Field

from pipelines.audio.g711 import ulaw_encode
from pipelines.audio.inbox import AudioFormat
from providers.base import ProviderError, SecretRef, STTProvider, STTStream, Transcript
from providers.http import (
    CloudConfig,
    resolve_api_key,
    ws_close_quietly,
    ws_closed_error,
    ws_connect,
)
from providers.usage import FirstResultClock, report_usage

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

log = logging.getLogger(__name__)

_QUEUE_MAX = 256
# A Finalize left unanswered while this much audio awaits a final, with nothing at all from the
# server since, means the connection is dead rather than the server being terse: Deepgram answers
# Finalize whenever a noticeable amount of audio is buffered.
_STALL_PENDING_S = 1.0


class DeepgramSTTConfig(CloudConfig):
    api_key: SecretRef
    base_url: str = Field("wss://api.deepgram.com", pattern=r"^wss?://")
    model: str = "nova-3"
    # Deepgram language code; None uses the agent's language (e.g. "en-US").
    language: str | None = None
    # auto: a μ-law call's own bytes (8 kHz), else linear16 at the call's rate; linear16 /
    # mulaw force that encoding (the engine converts the call's audio to it).
    encoding: Literal["auto", "linear16", "mulaw"] = "auto"
    interim_results: bool = True
    # Deepgram's own silence endpointing in ms (`speech_final`), or False to disable it.
    endpointing: Annotated[int, Field(ge=10, le=10_000)] | Literal[False] = 300
    utterance_end_ms: int | None = Field(None, ge=1000, le=5000)
    smart_format: bool = True
    punctuate: bool = True
    keyterms: list[str] = Field(default_factory=list)
    extra_params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    keepalive_interval_s: float = Field(4.0, gt=0.05, le=9.0)
    finalize_timeout_s: float = Field(1.5, gt=0, le=10.0)
    connect_timeout_s: float = Field(5.0, gt=0, le=60)


def _flag(v: bool) -> str:
    return "true" if v else "false"


class DeepgramSTT(STTProvider):
    name: ClassVar[str] = "deepgram"
    Config: ClassVar[type[DeepgramSTTConfig]] = DeepgramSTTConfig
    config: DeepgramSTTConfig

    def input_format(self, carrier: AudioFormat) -> AudioFormat:
        """`FormatChoosingSTT`: what the engine should push on a leg in `carrier` format."""
        enc = self.config.encoding
        if enc == "mulaw" or (enc == "auto" and carrier.encoding == "mulaw"):
            return AudioFormat(8000, "mulaw")
        return AudioFormat(carrier.sample_rate, "pcm16")

    async def open_as(self, fmt: AudioFormat, language: str) -> STTStream:
        if fmt.encoding == "mulaw" and fmt.sample_rate != 8000:
            raise ProviderError(self.name, "encoding 'mulaw' needs 8000 Hz audio, got "
                                f"{fmt.sample_rate} Hz", code="config")
        key = await resolve_api_key(self.ctx, self.config.api_key, self.name)
        assert key is not None
        stream = _DeepgramStream(self, fmt, language, key)
        await stream.start()
        return stream

    def listen_url(self, fmt: AudioFormat, language: str) -> str:
        cfg = self.config
        params: list[tuple[str, str]] = [
            ("model", cfg.model),
            ("language", cfg.language or language),
            ("encoding", "mulaw" if fmt.encoding == "mulaw" else "linear16"),
            ("sample_rate", str(fmt.sample_rate)),
            ("channels", "1"),
            ("interim_results", _flag(cfg.interim_results)),
            ("endpointing", "false" if cfg.endpointing is False else str(cfg.endpointing)),
            ("smart_format", _flag(cfg.smart_format)),
            ("punctuate", _flag(cfg.punctuate)),
        ]
        if cfg.utterance_end_ms is not None and cfg.interim_results:
            params.append(("utterance_end_ms", str(cfg.utterance_end_ms)))
        params += [("keyterm", k) for k in cfg.keyterms]
        params += [(k, _flag(v) if isinstance(v, bool) else str(v))
                   for k, v in cfg.extra_params.items()]
        return f"{cfg.base_url.rstrip('/')}/v1/listen?{urlencode(params)}"

    async def open(self, sample_rate: int, language: str) -> STTStream:
        """int16 PCM at `sample_rate` (re-encoded to μ-law when `encoding` is "mulaw")."""
        mulaw = self.config.encoding == "mulaw"
        return await self.open_as(AudioFormat(sample_rate, "mulaw" if mulaw else "pcm16"),
                                  language)


class _DeepgramStream(STTStream):
    finalizes_at_pauses = True  # pipelines.ports.PauseFinalizingStream: Finalize is cheap

    def __init__(self, provider: DeepgramSTT, fmt: AudioFormat, language: str, key: str) -> None:
        self._p = provider
        self._cfg = provider.config
        self._mulaw = fmt.encoding == "mulaw"
        self._url = provider.listen_url(fmt, language)
        self._headers = {"Authorization": f"Token {key}"}
        self._bytes_per_s = fmt.sample_rate * (1 if self._mulaw else 2)
        self._queue: asyncio.Queue[Transcript | ProviderError | None] = asyncio.Queue(_QUEUE_MAX)
        self._lock = asyncio.Lock()
        self._ws: ClientConnection | None = None
        self._connected = False
        self._pushed_s = 0.0
        self._final_end_s = 0.0
        self._sent_bytes = 0
        self._last_send = time.monotonic()
        self._last_interim: Transcript | None = None
        self._finalize_pending = False
        self._finalize_sent_at = 0.0
        self._last_message_at = time.monotonic()
        self._finalize_timer: asyncio.Task[None] | None = None
        self._finalize_clock = FirstResultClock(provider.ctx, provider.name)
        self._error: ProviderError | None = None
        self._closing = False
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ----------------------------------------------------------------------------

    async def _connect(self) -> ClientConnection:
        return await ws_connect(
            self._url, provider=self._p.name, headers=self._headers,
            policy=self._cfg.retry_policy(), open_timeout=self._cfg.connect_timeout_s,
        )

    async def start(self) -> None:
        # The first connection is made here so a bad key or model fails `open()` right away.
        self._ws = await self._connect()
        self._connected = True
        self._last_send = time.monotonic()
        self._tasks = [asyncio.create_task(self._supervise(), name="deepgram-recv"),
                       asyncio.create_task(self._keepalive(), name="deepgram-keepalive")]

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing = True
        if self._finalize_timer is not None:
            self._finalize_timer.cancel()
        supervisor, keepalive = self._tasks or (None, None)
        if keepalive is not None:
            keepalive.cancel()
        if self._connected and self._ws is not None:
            # CloseStream makes Deepgram flush, send its last results and Metadata, then close.
            with contextlib.suppress(Exception):
                async with self._lock:
                    await self._ws.send(json.dumps({"type": "CloseStream"}))
            if supervisor is not None:
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                    await asyncio.wait_for(asyncio.shield(supervisor), 1.0)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        await ws_close_quietly(self._ws)
        self._connected = False
        report_usage(self._p.ctx, self._p.name, self._cfg.model, "audio_seconds",
                     self._sent_bytes / self._bytes_per_s)
        self._put(None)

    # -- audio in -----------------------------------------------------------------------------

    async def push(self, frame: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            return
        if self._mulaw and frame.dtype == np.uint8:
            payload = frame.tobytes()  # the carrier's own μ-law bytes, as they came
        elif self._mulaw:
            payload = ulaw_encode(np.asarray(frame, dtype=np.int16))
        else:
            payload = np.asarray(frame, dtype="<i2").tobytes()
        if not payload:
            return  # an empty binary frame would make Deepgram close the stream
        async with self._lock:
            self._pushed_s += len(payload) / self._bytes_per_s
            if self._connected and self._ws is not None:
                await self._send(self._ws, payload)

    async def _send(self, ws: ClientConnection, data: bytes | str) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await ws.send(data)
        except ConnectionClosed:
            # The receive loop sees the same close and fails the stream; the recovery layer
            # replays this audio into the stream that replaces it.
            self._connected = False
            return
        self._last_send = time.monotonic()
        if isinstance(data, bytes):
            self._sent_bytes += len(data)

    async def flush(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            return
        self._finalize_clock.restart()
        if self._pushed_s - self._final_end_s < 0.02 and self._last_interim is None:
            # Everything already came back final: nothing for Deepgram to finalize.
            self._emit_final(Transcript("", True, 1.0, self._ms(self._pushed_s),
                                        self._ms(self._pushed_s)))
            return
        self._finalize_pending = True
        self._finalize_sent_at = time.monotonic()
        async with self._lock:
            if self._connected and self._ws is not None:
                await self._send(self._ws, json.dumps({"type": "Finalize"}))
        if self._finalize_timer is not None:
            self._finalize_timer.cancel()
        self._finalize_timer = asyncio.create_task(self._finalize_deadline())

    async def _finalize_deadline(self) -> None:
        await asyncio.sleep(self._cfg.finalize_timeout_s)
        if self._finalize_pending and self._stalled():
            # A hung connection: promoting an interim would end the turn on a fragment and, as
            # later turns get no results at all, leave the call deaf. Fail the stream instead so
            # the owner replaces it (a fallback STT replays the turn's audio; the engine reopens).
            log.warning("deepgram: no response to Finalize within %.1fs and nothing from the "
                        "server since; the connection is dead", self._cfg.finalize_timeout_s)
            self._closing = True  # the owner decides what replaces this stream
            self._connected = False
            self._fail(ProviderError(self._p.name, "the server stopped responding (no result "
                                     f"within {self._cfg.finalize_timeout_s:g}s of Finalize)",
                                     code="timeout"))
            await ws_close_quietly(self._ws)
            return
        if self._finalize_pending:
            last = self._last_interim
            log.info("deepgram: no finalize result within %.1fs; promoting the last interim",
                     self._cfg.finalize_timeout_s)
            self._emit_final(Transcript(last.text if last else "", True,
                                        last.confidence if last else 1.0,
                                        last.start_ms if last else self._ms(self._final_end_s),
                                        last.end_ms if last else self._ms(self._pushed_s)))

    async def _keepalive(self) -> None:
        interval = self._cfg.keepalive_interval_s
        while True:
            await asyncio.sleep(min(1.0, interval / 2))
            if not self._connected or self._ws is None:
                continue
            if time.monotonic() - self._last_send >= interval:
                async with self._lock:
                    if self._connected and self._ws is not None:
                        await self._send(self._ws, json.dumps({"type": "KeepAlive"}))

    # -- results out --------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Transcript]:
        while True:
            item = await self._queue.get()
            if item is None:
                self._queue.put_nowait(None)  # later readers end too
                return
            if isinstance(item, ProviderError):
                raise item
            yield item

    def _put(self, item: Transcript | ProviderError | None) -> None:
        if self._queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()  # a consumer this far behind has lost interims anyway
        self._queue.put_nowait(item)

    def _emit_final(self, tr: Transcript) -> None:
        self._finalize_pending = False
        if self._finalize_timer is not None and self._finalize_timer is not asyncio.current_task():
            self._finalize_timer.cancel()
        self._finalize_timer = None
        self._last_interim = None
        self._finalize_clock.mark()
        self._put(tr)

    def _ms(self, seconds: float) -> int:
        return round(seconds * 1000)

    def _stalled(self) -> bool:
        return (self._last_message_at < self._finalize_sent_at
                and self._pushed_s - self._final_end_s >= _STALL_PENDING_S)

    def _on_message(self, raw: str | bytes) -> None:
        self._last_message_at = time.monotonic()
        try:
            msg: dict[str, Any] = json.loads(raw)
        except ValueError:
            log.warning("deepgram: unparseable message skipped")
            return
        kind = msg.get("type")
        if kind == "Results":
            self._on_results(msg)
        elif kind == "Metadata":
            log.debug("deepgram: metadata request_id=%s", msg.get("request_id"))
        elif kind == "Error" or msg.get("err_msg"):
            log.warning("deepgram: error message: %s",
                        msg.get("description") or msg.get("err_msg") or msg.get("message"))
        # SpeechStarted / UtteranceEnd: our own VAD and turn detector decide turns.

    def _on_results(self, msg: dict[str, Any]) -> None:
        alts = (msg.get("channel") or {}).get("alternatives") or [{}]
        text = (alts[0].get("transcript") or "").strip()
        confidence = float(alts[0].get("confidence") or 0.0)
        start = float(msg.get("start") or 0.0)
        end = start + float(msg.get("duration") or 0.0)
        if not msg.get("is_final"):
            if text:
                tr = Transcript(text, False, confidence, self._ms(start), self._ms(end))
                self._last_interim = tr
                self._put(tr)
            return
        self._final_end_s = max(self._final_end_s, end)
        tr = Transcript(text, True, confidence or 1.0, self._ms(start), self._ms(end))
        if msg.get("from_finalize") and self._finalize_pending:
            self._emit_final(tr)
        elif text:
            self._last_interim = None
            self._put(tr)

    # -- connection supervision ---------------------------------------------------------------

    async def _supervise(self) -> None:
        from websockets.exceptions import ConnectionClosed

        ws = self._ws
        assert ws is not None
        err: ProviderError
        try:
            async for raw in ws:
                self._on_message(raw)
            err = ProviderError(self._p.name, "stream closed by the server", code="closed")
        except ConnectionClosed as exc:
            err = ws_closed_error(self._p.name, exc)
        except Exception as exc:
            log.exception("deepgram: receive loop failed")
            err = ProviderError(self._p.name, f"receive failed ({type(exc).__name__})")
        self._connected = False
        if self._closing:
            return
        # No reconnect here: the recovery layer reopens the stream and replays the utterance.
        log.warning("deepgram: connection lost (%s)", err.message)
        self._fail(err)

    def _fail(self, err: ProviderError) -> None:
        self._error = err
        self._put(err)
