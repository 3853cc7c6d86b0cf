"""TTS `cartesia`: Sonic over one persistent WebSocket per call, multiplexed by context id.

Wire: `wss://api.cartesia.ai/tts/websocket` with `Authorization: Bearer KEY` and
`Cartesia-Version` headers (server-side auth; keys never go into the URL). A generation request is
`{model_id, transcript, voice: {mode: "id", id}, output_format: {container: "raw", encoding:
"pcm_s16le"|"pcm_mulaw", sample_rate}, language, context_id, continue}`; the server answers
`{type: "chunk", data: base64, context_id}` messages, then `{type: "done"}` for the context, or
`{type: "error", error, status_code}`. Barge-in sends `{context_id, cancel: true}`.

Every `synthesize()` gets its own context, so sentences the engine synthesises concurrently share
the socket without mixing. With `continuations: true`, consecutive sentences of one answer go
into the same context (`continue: true`) so prosody carries across sentence boundaries: each
sentence is followed by a manual flush (`transcript: "", continue: true, flush: true`) and its
audio ends at the matching `flush_done`. A context idle for `continuation_window_ms` is closed
with an empty `continue: false` input (Cartesia expires contexts 1 s after their last audio, so
the window stays below that); a reused context the server no longer knows is retried on a fresh
one before any audio has been produced.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from providers.base import AudioChunk, ProviderContext, ProviderError, SecretRef
from providers.http import (
    CloudConfig,
    redact,
    resolve_api_key,
    vendor_message,
    ws_close_quietly,
    ws_closed_error,
    ws_connect,
)
from providers.tts.audio_out import ChunkDecoder, FormattedTTS
from providers.usage import FirstResultClock, report_usage

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

log = logging.getLogger(__name__)


class CartesiaTTSConfig(CloudConfig):
    api_key: SecretRef
    base_url: str = Field("wss://api.cartesia.ai", pattern=r"^wss?://")
    cartesia_version: str = "2026-03-01"
    model: str = "sonic-3"
    voice_id: str = "f786b574-daa5-4673-aa0c-cbe3e8534c02"
    language: str = "en"
    output: Literal["pcm_8000", "pcm_16000", "pcm_22050", "pcm_24000", "pcm_44100",
                    "mulaw_8000"] = "pcm_16000"
    # generation_config (sonic-3): speed 0.6–1.5, volume 0.5–2.0, emotion e.g. "content".
    speed: float | None = Field(None, ge=0.6, le=1.5)
    volume: float | None = Field(None, ge=0.5, le=2.0)
    emotion: str | None = None
    max_buffer_delay_ms: int | None = Field(None, ge=0, le=5000)
    continuations: bool = False
    continuation_window_ms: int = Field(600, ge=50, le=900)
    connect_timeout_s: float = Field(5.0, gt=0, le=60)


class _StaleContext(Exception):
    """A continued context was rejected before producing audio (expired server-side)."""


@dataclass
class _Context:
    id: str
    voice: str
    queue: asyncio.Queue[dict[str, Any] | ProviderError] = field(default_factory=asyncio.Queue)
    busy: bool = False
    closed: bool = False  # no more input may be sent (continue:false sent, or cancelled)
    reused: bool = False
    last_activity: float = field(default_factory=time.monotonic)


class CartesiaTTS(FormattedTTS):
    name: ClassVar[str] = "cartesia"
    Config: ClassVar[type[CartesiaTTSConfig]] = CartesiaTTSConfig
    config: CartesiaTTSConfig

    def __init__(self, config: CartesiaTTSConfig, ctx: ProviderContext) -> None:
        super().__init__(config, ctx)
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()
        self._contexts: dict[str, _Context] = {}
        self._turn: _Context | None = None  # the context open for continuations
        self._closers: set[asyncio.Task[None]] = set()

    # -- connection ---------------------------------------------------------------------------

    async def _socket(self) -> ClientConnection:
        from websockets.protocol import State

        async with self._connect_lock:
            if self._ws is not None and self._ws.state is State.OPEN:
                return self._ws
            cfg = self.config
            key = await resolve_api_key(self.ctx, cfg.api_key, self.name)
            ws = await ws_connect(
                f"{cfg.base_url.rstrip('/')}/tts/websocket", provider=self.name,
                headers={"Authorization": f"Bearer {key}",
                         "Cartesia-Version": cfg.cartesia_version},
                policy=cfg.retry_policy(), open_timeout=cfg.connect_timeout_s)
            self._ws = ws
            self._turn = None
            self._reader = asyncio.create_task(self._read(ws), name="cartesia-recv")
            return ws

    async def _read(self, ws: ClientConnection) -> None:
        from websockets.exceptions import ConnectionClosed

        err: ProviderError
        try:
            async for raw in ws:
                try:
                    msg = json.loads(raw)
                except ValueError:
                    log.warning("cartesia: unparseable message skipped")
                    continue
                ctx = self._contexts.get(msg.get("context_id") or "")
                if ctx is not None:
                    ctx.queue.put_nowait(msg)
                elif msg.get("type") == "error" and not msg.get("context_id"):
                    # A connection-level error concerns every context in flight.
                    for c in list(self._contexts.values()):
                        c.queue.put_nowait(msg)
                # else: late output of a cancelled or finished context
            err = ProviderError(self.name, "connection closed by the server", code="closed")
        except ConnectionClosed as exc:
            err = ws_closed_error(self.name, exc)
        except Exception as exc:
            log.exception("cartesia: receive loop failed")
            err = ProviderError(self.name, f"receive failed ({type(exc).__name__})")
        if self._ws is ws:
            self._ws = None
            self._turn = None
        for c in list(self._contexts.values()):
            c.queue.put_nowait(err)

    async def aclose(self) -> None:
        for t in list(self._closers):
            t.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        await ws_close_quietly(self._ws)
        self._ws = None
        closed = ProviderError(self.name, "provider closed", code="closed")
        for c in self._contexts.values():
            c.queue.put_nowait(closed)  # wake any synthesize() still waiting
        self._contexts.clear()

    # -- requests -----------------------------------------------------------------------------

    def _request(self, ctx: _Context, transcript: str, *, cont: bool,
                 flush: bool = False) -> str:
        cfg = self.config
        msg: dict[str, Any] = {
            "model_id": cfg.model,
            "transcript": transcript,
            "voice": {"mode": "id", "id": ctx.voice},
            "output_format": {
                "container": "raw",
                "encoding": "pcm_mulaw" if self._spec.encoding == "mulaw" else "pcm_s16le",
                "sample_rate": self._spec.sample_rate,
            },
            "language": cfg.language,
            "context_id": ctx.id,
            "continue": cont,
        }
        if flush:
            msg["flush"] = True
        gen = {k: v for k, v in (("speed", cfg.speed), ("volume", cfg.volume),
                                 ("emotion", cfg.emotion)) if v is not None}
        if gen:
            msg["generation_config"] = gen
        if cfg.max_buffer_delay_ms is not None:
            msg["max_buffer_delay_ms"] = cfg.max_buffer_delay_ms
        return json.dumps(msg)

    def _context_for(self, voice: str) -> _Context:
        turn = self._turn
        window = self.config.continuation_window_ms / 1000
        if (self.config.continuations and turn is not None and not turn.busy and not turn.closed
                and turn.voice == voice and time.monotonic() - turn.last_activity < window):
            turn.reused = True
            return turn
        ctx = _Context(uuid.uuid4().hex, voice)
        self._contexts[ctx.id] = ctx
        if self.config.continuations:
            self._turn = ctx
        return ctx

    async def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[AudioChunk]:
        if not text.strip():
            return
        voice_id = voice or self.config.voice_id
        clock = FirstResultClock(self.ctx, self.name)
        await self._socket()  # (re)connecting resets the continuation context, so go first
        ctx = self._context_for(voice_id)
        try:
            async for chunk in self._generate(ctx, text, clock):
                yield chunk
        except _StaleContext:
            # The continued context had expired server-side before any audio: start afresh.
            await self._socket()
            async for chunk in self._generate(self._context_for(voice_id), text, clock):
                yield chunk

    async def _generate(self, ctx: _Context, text: str, clock: FirstResultClock
                        ) -> AsyncIterator[AudioChunk]:
        cfg = self.config
        ws = await self._socket()
        decoder = ChunkDecoder(self._spec)
        ctx.busy = True
        finished = False
        got_audio = False
        try:
            if cfg.continuations:
                # Later inputs are appended verbatim, so keep a space between sentences.
                piece = (" " if ctx.reused else "") + text.strip()
                await ws.send(self._request(ctx, piece, cont=True))
                await ws.send(self._request(ctx, "", cont=True, flush=True))
            else:
                await ws.send(self._request(ctx, text.strip(), cont=False))
                ctx.closed = True
            while True:
                try:
                    async with asyncio.timeout(cfg.read_timeout_s):
                        msg = await ctx.queue.get()
                except TimeoutError:
                    raise ProviderError(self.name, "no audio within the read timeout",
                                        code="timeout") from None
                if isinstance(msg, ProviderError):
                    raise msg
                kind = msg.get("type")
                if kind == "error":
                    err_msg, code = vendor_message(msg)
                    ctx.closed = True
                    self._forget(ctx)
                    if ctx.reused and not got_audio:
                        finished = True  # nothing lost: synthesize() retries on a new context
                        raise _StaleContext
                    status = msg.get("status_code")
                    raise ProviderError(self.name, redact(err_msg or "error"), code=code,
                                        status=status if isinstance(status, int) else None)
                if kind == "chunk" and msg.get("data"):
                    try:
                        chunk = decoder.feed(base64.b64decode(msg["data"]))
                    except (binascii.Error, ValueError):
                        raise ProviderError(self.name, "undecodable audio chunk",
                                            code="bad_response") from None
                    ctx.last_activity = time.monotonic()
                    if chunk is not None:
                        if not got_audio:
                            report_usage(self.ctx, self.name, cfg.model, "characters",
                                         float(len(text)))
                        got_audio = True
                        clock.mark()
                        yield chunk
                elif kind == "flush_done" and cfg.continuations:
                    finished = True
                    return
                elif kind == "done":
                    ctx.closed = True
                    finished = True
                    self._forget(ctx)
                    return
                # timestamps / phoneme messages are not needed here
        finally:
            ctx.busy = False
            ctx.last_activity = time.monotonic()
            if not finished:
                await self._cancel(ctx)
            elif cfg.continuations and not ctx.closed:
                self._schedule_close(ctx)

    async def _cancel(self, ctx: _Context) -> None:
        """Barge-in or failure: tell Cartesia to stop generating for this context."""
        self._forget(ctx)
        ctx.closed = True
        ws = self._ws
        if ws is None:
            return
        with contextlib.suppress(Exception):
            await ws.send(json.dumps({"context_id": ctx.id, "cancel": True}))

    def _forget(self, ctx: _Context) -> None:
        self._contexts.pop(ctx.id, None)
        if self._turn is ctx:
            self._turn = None

    def _schedule_close(self, ctx: _Context) -> None:
        task = asyncio.create_task(self._close_when_idle(ctx))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _close_when_idle(self, ctx: _Context) -> None:
        window = self.config.continuation_window_ms / 1000
        while True:
            await asyncio.sleep(max(0.0, ctx.last_activity + window - time.monotonic()))
            if ctx.busy or ctx.closed:
                return
            if time.monotonic() - ctx.last_activity >= window:
                break
        ctx.closed = True
        self._forget(ctx)
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.send(self._request(ctx, "", cont=False))
