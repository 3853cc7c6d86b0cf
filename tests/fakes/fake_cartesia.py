"""A local fake of Cartesia's TTS WebSocket (`ws_base_url` + `/tts/websocket`, endpoint
name "websocket").

Auth as the service takes it: `Authorization: Bearer KEY` (or `X-API-Key`, or `?api_key=`), plus
a version (`Cartesia-Version` header or `?cartesia_version=`). One socket carries many contexts:
each request `{model_id, transcript, voice: {mode: "id", id}, output_format: {container: "raw",
encoding: "pcm_s16le"|"pcm_mulaw", sample_rate}, context_id, continue, flush?}` is checked and
queued on its context, whose audio is generated in order:
- `continue: false` → the buffered transcript is spoken, then `{"type": "done"}`;
- `flush: true` → the buffered transcript is spoken with the current `flush_id` on every chunk,
  then `{"type": "flush_done", "flush_id"}`, and the id increments;
- `continue: true` alone → buffered; spoken after `max_buffer_delay_ms` (0 = at once).
Chunks are `{"type": "chunk", "data": base64, "done": false, "status_code": 206, "step_time",
"context_id", "flush_id"}`. `{context_id, cancel: true}` stops that context at once (timestamped
in `rec.events` as ("cancel", id)). A context expires `context_expiry_s` after its last audio
once idle; input for an expired or finished context gets `{"type": "error", "context_id",
"status_code": 400, "done": true, "error"}`. Audio is a tone continuing across a context's inputs:
`expected_audio(text, encoding, rate)` is what one `continue: false` request produces.

Failures: "status" (refused upgrade), "drop" / "close" after `after` chunks, "hang" (swallow
everything), "error_event" (the next request gets an error message for its context).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.audio.g711 import ulaw_encode
from tests.fakes.vendor_base import (
    Failure,
    Recorded,
    WsTtsVendor,
    cut,
    refuse,
    watch_close,
)


@dataclass
class _Ctx:
    id: str
    buffer: str = ""
    flush_id: int = 1
    closed: bool = False
    cancelled: bool = False
    busy: int = 0
    last_audio_at: float | None = None
    sample_pos: int = 0
    work: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    worker: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None


class _Conn:
    def __init__(self, ws: Any, rec: Recorded, failure: Failure | None) -> None:
        self.ws = ws
        self.rec = rec
        self.failure = failure
        self.contexts: dict[str, _Ctx] = {}
        self.chunks_sent = 0


class FakeCartesia(WsTtsVendor):
    thread_name = "fake-cartesia"

    def __init__(self, *, context_expiry_s: float = 1.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.context_expiry_s = context_expiry_s

    def expected_audio(self, text: str, encoding: str = "pcm_s16le", rate: int = 16000,
                       start: int = 0) -> np.ndarray:
        pcm = self._audio(text, rate, start)
        return np.frombuffer(ulaw_encode(pcm), np.uint8) if encoding == "pcm_mulaw" else pcm

    def _audio(self, text: str, rate: int, start: int) -> np.ndarray:
        return super()._audio(text.strip(), rate, start)

    def _check(self, connection: Any, request: Any) -> Any:
        rec = self._record_upgrade(connection, "websocket")
        headers = rec.headers
        if rec.path != "/tts/websocket":
            return refuse(rec, 404, {"error": "Not found"})
        auth = headers.get("authorization", "")
        key = (auth[len("Bearer "):] if auth.startswith("Bearer ") else None) or \
            headers.get("x-api-key") or rec.q("api_key")
        if not self.key_ok(key):
            return refuse(rec, 401, {"error": "Invalid API key"})
        if not (headers.get("cartesia-version") or rec.q("cartesia_version")):
            return refuse(rec, 400, {"error": "Cartesia-Version header is required"})
        failure = self.failures.take("websocket")
        connection.fake_failure = failure
        if failure is not None and failure.kind == "status":
            return refuse(rec, failure.status, {"error": failure.message},
                          failure.retry_headers())
        return None

    async def _handler(self, ws: Any) -> None:
        conn = _Conn(ws, ws.fake_rec, ws.fake_failure)
        watcher = watch_close(ws, conn.rec)
        try:
            async for raw in ws:
                try:
                    msg = json.loads(raw)
                except ValueError:
                    await self._error(conn, None, "invalid JSON")
                    continue
                conn.rec.messages.append(msg)
                if conn.failure is not None and conn.failure.kind == "hang":
                    continue
                await self._on_request(conn, msg)
        except Exception as exc:  # the client went away
            conn.rec.note("client-gone", type(exc).__name__)
        finally:
            for c in conn.contexts.values():
                if c.worker is not None:
                    c.worker.cancel()
            with contextlib.suppress(Exception):
                await ws.close()
            await watcher

    async def _error(self, conn: _Conn, cid: str | None, message: str,
                     status: int = 400) -> None:
        conn.rec.note("error", message)
        with contextlib.suppress(Exception):
            await conn.ws.send(json.dumps({"type": "error", "context_id": cid,
                                           "status_code": status, "done": True,
                                           "error": message}))

    async def _on_request(self, conn: _Conn, msg: dict[str, Any]) -> None:
        cid = msg.get("context_id")
        if msg.get("cancel"):
            conn.rec.note("cancel", cid)
            ctx = conn.contexts.get(cid or "")
            if ctx is not None:
                ctx.cancelled = ctx.closed = True
                if ctx.worker is not None:
                    ctx.worker.cancel()
            return
        fmt = msg.get("output_format") or {}
        voice = msg.get("voice") or {}
        problems = [name for name, ok in (
            ("model_id", bool(msg.get("model_id"))),
            ("voice", voice.get("mode") == "id" and bool(voice.get("id"))),
            ("output_format", fmt.get("container") == "raw"
             and fmt.get("encoding") in ("pcm_s16le", "pcm_mulaw")
             and isinstance(fmt.get("sample_rate"), int)),
            ("transcript", isinstance(msg.get("transcript"), str)),
            ("context_id", bool(cid)),
        ) if not ok]
        if problems:
            await self._error(conn, cid, f"invalid request: {', '.join(problems)}")
            return
        if conn.failure is not None and conn.failure.kind == "error_event":
            failure, conn.failure = conn.failure, None
            await self._error(conn, cid, failure.message, failure.status)
            return
        ctx = conn.contexts.get(cid)
        if ctx is not None and (ctx.closed or self._expired(ctx)):
            await self._error(conn, cid, f"Context {cid} is no longer active (done or expired)")
            return
        if ctx is None:
            ctx = conn.contexts[cid] = _Ctx(cid)
            ctx.worker = asyncio.create_task(self._work(conn, ctx))
        ctx.buffer += msg["transcript"]
        spec = (fmt["encoding"], fmt["sample_rate"])
        if ctx.timer is not None:
            ctx.timer.cancel()
            ctx.timer = None
        if msg.get("flush"):
            ctx.busy += 1
            ctx.work.put_nowait(("speak", (ctx.buffer, spec, ctx.flush_id)))
            ctx.work.put_nowait(("flush_done", ctx.flush_id))
            ctx.flush_id += 1
            ctx.buffer = ""
        elif not msg.get("continue"):
            ctx.closed = True
            ctx.busy += 1
            ctx.work.put_nowait(("speak", (ctx.buffer, spec, ctx.flush_id)))
            ctx.work.put_nowait(("done", None))
            ctx.buffer = ""
        elif ctx.buffer.strip():
            delay = msg.get("max_buffer_delay_ms", 3000) / 1000

            def speak_buffered(c: _Ctx = ctx) -> None:
                c.timer = None
                if c.buffer.strip() and not c.closed:
                    c.busy += 1
                    c.work.put_nowait(("speak", (c.buffer, spec, c.flush_id)))
                    c.buffer = ""

            if delay <= 0:
                speak_buffered()
            else:
                ctx.timer = asyncio.get_running_loop().call_later(delay, speak_buffered)

    def _expired(self, ctx: _Ctx) -> bool:
        return (ctx.busy == 0 and ctx.work.empty() and ctx.last_audio_at is not None
                and time.monotonic() - ctx.last_audio_at > self.context_expiry_s)

    async def _work(self, conn: _Conn, ctx: _Ctx) -> None:
        ws = conn.ws
        while True:
            kind, arg = await ctx.work.get()
            if kind == "speak":
                text, (encoding, rate), flush_id = arg
                try:
                    if text.strip():
                        await self._speak(conn, ctx, text, encoding, rate, flush_id)
                finally:
                    ctx.busy -= 1
            elif kind == "flush_done":
                await ws.send(json.dumps({"type": "flush_done", "done": False,
                                          "flush_done": True, "flush_id": arg,
                                          "status_code": 206, "context_id": ctx.id}))
            elif kind == "done":
                await ws.send(json.dumps({"type": "done", "done": True, "status_code": 206,
                                          "context_id": ctx.id}))
                conn.rec.completed = True
                return

    async def _speak(self, conn: _Conn, ctx: _Ctx, text: str, encoding: str, rate: int,
                     flush_id: int) -> None:
        pcm = self._audio(text, rate, ctx.sample_pos)
        ctx.sample_pos += pcm.size
        payload = ulaw_encode(pcm) if encoding == "pcm_mulaw" else pcm.astype("<i2").tobytes()
        step = max(1, rate * (1 if encoding == "pcm_mulaw" else 2) * self.chunk_ms // 1000)
        failure = conn.failure
        for k, i in enumerate(range(0, len(payload), step)):
            if (failure is not None and conn.chunks_sent >= failure.after
                    and await cut(conn.ws, conn.rec, failure)):
                return
            if k == 0 and self.first_byte_delay_s:
                await asyncio.sleep(self.first_byte_delay_s)
            elif k and self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            await conn.ws.send(json.dumps({
                "type": "chunk", "data": base64.b64encode(payload[i:i + step]).decode(),
                "done": False, "status_code": 206, "step_time": 5.0, "context_id": ctx.id,
                "flush_id": flush_id}))
            conn.chunks_sent += 1
            ctx.last_audio_at = time.monotonic()
