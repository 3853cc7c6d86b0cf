"""A Plivo simulator: plays Plivo's side of a call against a Phonebooth server.

It behaves as Plivo does on the wire:
- signs (V3, it knows the auth token) and POSTs the answer request, parses the XML;
- opens the `<Stream>` WebSocket with a V3-signed upgrade and sends `start`;
- streams caller audio (a WAV, or silence) as 20 ms `media` frames in real time;
- plays received `playAudio` on a playout clock (`FarEndPlayout`), acks each `checkpoint` with
  `playedStream` only once the audio before it has played, answers `clearAudio` with
  `clearedAudio` after dropping what had not played, records `sendDTMF`;
- sends caller DTMF on request, posts stream-status and hangup callbacks, and records what the
  caller heard to a WAV, with a printed timeline.

Use it from tests (`async with sim.call(...) as call:`) or from `phonebooth call`. The wire
formats themselves live in `app.simulator.protocol`, shared with the load bench's driver.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import numpy as np

from app.simulator import protocol as wire
from app.simulator.playout import FarEndPlayout
from app.simulator.protocol import FRAME_S, AnswerResult, parse_answer
from app.telephony.plivo.codec import StreamCodec
from pipelines.audio.resample import resample

log = logging.getLogger(__name__)


# --- timeline / result -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TimelineEvent:
    t: float  # seconds since the call started
    what: str


@dataclass
class SimCallResult:
    answer: AnswerResult
    call_uuid: str
    stream_id: str
    connected: bool = False
    close_code: int | None = None
    close_reason: str = ""
    closed_by: str = ""  # "server" | "caller" | ""
    sample_rate: int = 8000
    heard: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    max_queued_ms: float = 0.0
    queued_samples: list[tuple[float, float]] = field(default_factory=list)
    checkpoints_received: list[str] = field(default_factory=list)
    checkpoints_acked: list[str] = field(default_factory=list)
    checkpoints_discarded: list[str] = field(default_factory=list)
    clears: list[tuple[float, float]] = field(default_factory=list)  # (t, ms dropped)
    play_frames: int = 0  # 20 ms frames of agent audio (a playAudio may carry several)
    play_errors: list[str] = field(default_factory=list)
    dtmf_received: list[str] = field(default_factory=list)
    media_sent: int = 0
    timeline: list[TimelineEvent] = field(default_factory=list)
    # Seconds since the call started: where each stretch of queued caller audio finished
    # streaming, and where each stretch of agent audio began to play (for voice-to-voice).
    caller_audio_ends: list[float] = field(default_factory=list)
    # When each run of caller audio was due to start (seconds since t0). A frame of the run is
    # never sent before its due time (the sender may lag, never lead), so due start + offset
    # bounds when any point of that audio reached the server.
    caller_audio_due: list[float] = field(default_factory=list)
    agent_audio_starts: list[float] = field(default_factory=list)

    def format_timeline(self) -> str:
        return "\n".join(f"{e.t * 1000:9.1f} ms  {e.what}" for e in self.timeline)


class PlivoSimulator:
    """Plivo, as far as one Phonebooth server can tell."""

    def __init__(
        self,
        base_url: str,
        auth_token: str,
        *,
        main_auth_token: str | None = None,
        public_url: str | None = None,
        account_id: str = "MASIMULATOR000000000",
        connect_to_base: bool = True,
        timeout_s: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # The URL the server believes it is reached at: what Plivo signs over.
        self.public_url = (public_url or base_url).rstrip("/")
        self.auth_token = auth_token
        self.main_auth_token = main_auth_token
        self.account_id = account_id
        self.connect_to_base = connect_to_base
        self.timeout_s = timeout_s

    def _connect_url(self, url: str) -> str:
        return wire.with_base(url, self.base_url) if self.connect_to_base else url

    def signed_headers(self, method: str, url: str,
                       params: dict[str, Any] | None) -> dict[str, str]:
        return wire.signed_headers(self.auth_token, method, url, params,
                                   main_auth_token=self.main_auth_token)

    async def request(self, method: str, url: str, params: dict[str, str], *,
                      sign: bool = True, sign_url: str | None = None,
                      headers: dict[str, str] | None = None) -> httpx.Response:
        """A Plivo-style callback: form-encoded POST (or GET query), V3-signed over `url`
        (or `sign_url`), sent to the server at `base_url`."""
        h: dict[str, str] = {"User-Agent": wire.USER_AGENT}
        if sign:
            # GET: the params travel in the query, and the V3 base string merges them in.
            h.update(self.signed_headers(method, sign_url or url, params))
        h.update(headers or {})
        async with httpx.AsyncClient(timeout=self.timeout_s, trust_env=False) as client:
            if method == "GET":
                return await client.get(self._connect_url(url), params=params, headers=h)
            return await client.post(self._connect_url(url), data=params, headers=h)

    async def answer(self, *, to: str, from_: str = "14155550100", call_uuid: str | None = None,
                     direction: str = "inbound", path: str = "/plivo/answer",
                     query: str = "", method: str = "POST",
                     extra: dict[str, str] | None = None, sign: bool = True,
                     sign_url: str | None = None,
                     headers: dict[str, str] | None = None) -> tuple[AnswerResult, str]:
        call_uuid = call_uuid or str(uuid.uuid4())
        params = {**wire.answer_params(call_uuid, to=to, from_=from_, direction=direction),
                  **(extra or {})}
        url = self.public_url + path + (f"?{query}" if query else "")
        resp = await self.request(method, url, params, sign=sign, sign_url=sign_url,
                                  headers=headers)
        return parse_answer(resp.status_code, resp.text), call_uuid

    def call(self, *, to: str, from_: str = "14155550100", agent: str | None = None,
             call_uuid: str | None = None, direction: str = "inbound",
             answer_query: str = "", send_silence: bool = True,
             on_event: Callable[[TimelineEvent], None] | None = None) -> SimCall:
        query = answer_query or (f"agent={agent}" if agent else "")
        return SimCall(self, to=to, from_=from_, call_uuid=call_uuid, direction=direction,
                       answer_query=query, send_silence=send_silence, on_event=on_event)


class SimCall:
    """One simulated call. `async with` answers and connects; leaving hangs up (caller side)."""

    def __init__(self, sim: PlivoSimulator, *, to: str, from_: str, call_uuid: str | None,
                 direction: str, answer_query: str, send_silence: bool,
                 on_event: Callable[[TimelineEvent], None] | None) -> None:
        self.sim = sim
        self.to = to
        self.from_ = from_
        self.direction = direction
        self.answer_query = answer_query
        self.send_silence = send_silence
        self.on_event = on_event
        self.t0 = time.monotonic()
        self.result = SimCallResult(AnswerResult(0, "", "empty"), call_uuid or str(uuid.uuid4()),
                                    str(uuid.uuid4()))
        self.codec: StreamCodec | None = None
        self.far: FarEndPlayout | None = None
        self._ws: Any = None
        self._seq = 0
        self._chunk = 0
        self._send_lock = asyncio.Lock()
        self._source: deque[bytes] = deque()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = asyncio.Event()
        self._ended = False
        self._playing = False
        self.agent_spoke = False  # any agent audio played yet
        self._agent_quiet_since: float | None = None  # agent audio ran out at (monotonic)
        self._agent_started_at: float | None = None  # the latest agent audio began (monotonic)
        self._hangup_cause = wire.CALLER_HANGUP

    # --- properties ---------------------------------------------------------------------------
    @property
    def call_uuid(self) -> str:
        return self.result.call_uuid

    @property
    def stream_id(self) -> str:
        return self.result.stream_id

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def session_id(self) -> str | None:
        """The server's session id: the last path segment of the stream URL it answered with
        (`/plivo/stream/{session_id}?token=...`)."""
        url = self.result.answer.stream_url
        if not url:
            return None
        return unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]) or None

    @property
    def audio_pending(self) -> bool:
        """Caller audio queued by `say()` that has not been streamed yet."""
        return bool(self._source)

    def note(self, what: str) -> None:
        ev = TimelineEvent(time.monotonic() - self.t0, what)
        self.result.timeline.append(ev)
        if self.on_event is not None:
            self.on_event(ev)

    # --- lifecycle ----------------------------------------------------------------------------
    async def __aenter__(self) -> SimCall:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.hangup()

    async def start(self) -> AnswerResult:
        ans, _ = await self.sim.answer(to=self.to, from_=self.from_, call_uuid=self.call_uuid,
                                       direction=self.direction, query=self.answer_query)
        self.result.answer = ans
        self.note(f"answer: HTTP {ans.status_code} → {ans.kind}"
                  + (f" ({ans.speak_text!r})" if ans.speak_text else "")
                  + (f" hangup reason={ans.hangup_reason!r}" if ans.hangup_reason else ""))
        if ans.kind != "stream" or not ans.stream_url:
            self._ended = True
            self._closed.set()
            return ans
        await self.connect(ans.stream_url, ans.content_type)
        return ans

    async def connect(self, stream_url: str, content_type: str,
                      headers: dict[str, str] | None = None, begin: bool = True) -> None:
        """Open the stream WebSocket (V3-signed upgrade); `begin` sends `start` and starts
        the caller's audio (tests that script a bad `start` pass False and call `begin()`)."""
        self.codec = StreamCodec.parse(content_type)
        self._ws = await wire.open_stream(
            stream_url, connect_url=self.sim._connect_url(stream_url),
            auth_token=self.sim.auth_token, main_auth_token=self.sim.main_auth_token,
            headers=headers, open_timeout=self.sim.timeout_s)
        self.result.connected = True
        self.result.sample_rate = self.codec.sample_rate
        self.far = FarEndPlayout(self.codec.sample_rate)
        self.note(f"stream connected ({self.codec.content_type})")
        self._tasks = [asyncio.create_task(self._receive(), name="sim-receive"),
                       asyncio.create_task(self._tick(), name="sim-playout")]
        if begin:
            await self.begin()

    async def begin(self, media_format: dict[str, Any] | None = None) -> None:
        """Send `start` (optionally announcing another `mediaFormat`) and start caller audio."""
        assert self.codec is not None, "not connected"
        fmt = media_format or {"encoding": self.codec.encoding,
                               "sampleRate": self.codec.sample_rate}
        await self.send_json(wire.start_message(call_uuid=self.call_uuid,
                                                stream_id=self.stream_id,
                                                account_id=self.sim.account_id,
                                                media_format=fmt))
        self.note(f"start sent ({fmt.get('encoding')}/{fmt.get('sampleRate')})")
        self._tasks.append(asyncio.create_task(self._send_media(), name="sim-media"))
        await self._status_callback("StartStream")

    async def hangup(self, cause: str = "NORMAL_CLEARING") -> None:
        """The caller hangs up: the stream closes and Plivo posts its callbacks."""
        if self._ended:
            await self._finish()
            return
        self._ended = True
        if cause != "NORMAL_CLEARING":
            self._hangup_cause = (cause, "", cause, "Caller")
        if self._ws is not None and not self._closed.is_set():
            self.note("caller hangs up")
            self.result.closed_by = self.result.closed_by or "caller"
            with contextlib.suppress(Exception):
                await self._ws.close(1000)
        await self._finish()

    async def remote_hangup(self) -> None:
        """The server asked Plivo's REST API to hang up (wired up by a fake REST server)."""
        self.note("hangup requested through the REST API")
        self._hangup_cause = ("NORMAL_CLEARING", "4000", "Normal Hangup", "API Request")
        self.result.closed_by = self.result.closed_by or "api"
        await self.hangup()

    async def _finish(self) -> None:
        for t in self._tasks:
            if not t.done():
                t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        self._tasks = []
        if self.far is not None:
            self.far.advance()
            self.result.heard = self.far.recording()
            self.result.max_queued_ms = self.far.max_queued_ms
            self.result.queued_samples = [(q.at - self.t0, q.queued_ms)
                                          for q in self.far.queue_samples]
        if self.result.connected and not getattr(self, "_callbacks_sent", False):
            self._callbacks_sent = True
            await self._status_callback("StopStream")
            await self._hangup_callback()

    # --- caller actions -----------------------------------------------------------------------
    def say(self, samples: np.ndarray, sample_rate: int) -> float:
        """Queue caller audio (any rate); returns its duration in seconds."""
        assert self.codec is not None, "not connected"
        x = resample(np.asarray(samples, dtype=np.int16), sample_rate, self.codec.sample_rate)
        fb = self.codec.frame_samples
        pad = (-len(x)) % fb
        if pad:
            x = np.concatenate([x, np.zeros(pad, np.int16)])
        for i in range(0, len(x), fb):
            self._source.append(self.codec.encode(x[i : i + fb]))
        return len(x) / self.codec.sample_rate

    async def wait_said(self, within_s: float = 60.0) -> None:
        await self.wait_for(lambda: not self._source, within_s)

    async def send_dtmf(self, digit: str) -> None:
        self._seq += 1
        await self.send_json({"event": "dtmf", "streamId": self.stream_id,
                              "dtmf": {"track": "inbound", "digit": digit,
                                       "timestamp": str(int(time.time() * 1000))},
                              "extra_headers": ""}, count=False)
        self.note(f"caller presses {digit}")

    async def send_json(self, obj: dict[str, Any], count: bool = True) -> None:
        if count:
            self._seq += 1
        obj.setdefault("sequenceNumber", self._seq)
        await self.send_raw(json.dumps(obj))

    async def send_raw(self, data: str | bytes) -> None:
        async with self._send_lock:
            await self._ws.send(data)

    async def wait_for(self, predicate: Callable[[], bool], within_s: float = 10.0,
                       interval: float = 0.01) -> bool:
        deadline = time.monotonic() + within_s
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met in time")
            await asyncio.sleep(interval)
        return True

    async def wait_agent_quiet(self, quiet_s: float = 0.6, within_s: float = 15.0,
                               speak_within_s: float = 3.0, since: float | None = None) -> bool:
        """Wait until the agent has spoken (audio starting at or after `since`, a
        `time.monotonic()` value; default: the call's start) and then been silent for `quiet_s`,
        the way a polite caller waits for a greeting or an answer to end. False if no such
        audio started within `speak_within_s` or the call closed; TimeoutError after
        `within_s` if the agent keeps talking."""
        start = time.monotonic()
        since = self.t0 if since is None else since
        deadline = start + within_s
        while not self.closed:
            now = time.monotonic()
            began = self._agent_started_at
            spoke = began is not None and began >= since
            if not spoke and now - start > speak_within_s:
                return False
            quiet = self._agent_quiet_since
            if spoke and quiet is not None and now - quiet >= quiet_s:
                return True
            if now > deadline:
                raise TimeoutError("the agent kept talking")
            await asyncio.sleep(0.02)
        return False

    async def wait_closed(self, within_s: float = 10.0) -> None:
        await asyncio.wait_for(self._closed.wait(), within_s)

    # --- tasks --------------------------------------------------------------------------------
    async def _send_media(self) -> None:
        assert self.codec is not None
        silence = bytes([self.codec.silence_byte]) * self.codec.frame_bytes
        next_at = time.monotonic()
        speaking = False
        while not self._closed.is_set():
            if self._source:
                payload = self._source.popleft()
                if not speaking:
                    self.note("caller audio starts")
                    self.result.caller_audio_due.append(next_at - self.t0)
                    speaking = True
            else:
                if speaking:
                    self.note("caller audio ends")
                    self.result.caller_audio_ends.append(time.monotonic() - self.t0)
                    speaking = False
                payload = silence if self.send_silence else b""
            if payload:
                self._chunk += 1
                self._seq += 1
                msg = wire.media_message(
                    seq=self._seq, stream_id=self.stream_id, chunk=self._chunk,
                    timestamp_ms=int((time.monotonic() - self.t0) * 1000),
                    payload_b64=base64.b64encode(payload).decode())
                try:
                    await self.send_raw(msg)
                except Exception:
                    return
                self.result.media_sent += 1
            next_at += FRAME_S
            delay = next_at - time.monotonic()
            if delay < -0.2:  # fell far behind (machine busy): resync instead of bursting
                next_at = time.monotonic()
                delay = 0
            await asyncio.sleep(max(0.0, delay))

    async def _ack(self, names: list[str]) -> None:
        for name in names:
            self._seq += 1
            try:
                await self.send_raw(wire.played_stream(seq=self._seq, stream_id=self.stream_id,
                                                       name=name))
            except Exception:
                return
            self.result.checkpoints_acked.append(name)
            self.note(f"playedStream {name!r} sent")

    async def _tick(self) -> None:
        assert self.far is not None
        while not self._closed.is_set():
            await asyncio.sleep(0.005)
            done = self.far.advance()
            if self._playing and self.far.queued_ms == 0:
                self._playing = False
                self._agent_quiet_since = time.monotonic()
                self.note(f"agent audio ends (played {self.far.played_ms:.0f} ms in total)")
            if done:
                await self._ack(done)

    async def _receive(self) -> None:
        from websockets.exceptions import ConnectionClosed

        assert self.far is not None and self.codec is not None
        ws = self._ws
        try:
            async for raw in ws:
                now = time.monotonic()
                parsed = wire.server_message(raw)
                if parsed is None:
                    self.result.play_errors.append("unparseable message from server")
                    self.note("server sent an unparseable message")
                    continue
                event, msg = parsed
                if event == "playAudio":
                    await self._on_play(msg, now)
                elif event == "checkpoint":
                    name = str(msg.get("name", ""))
                    self.result.checkpoints_received.append(name)
                    self.note(f"checkpoint {name!r} (queued {self.far.queued_ms:.0f} ms)")
                    await self._ack(self.far.checkpoint(name, now))
                elif event == "clearAudio":
                    dropped, done, discarded = self.far.clear(now)
                    if self._playing:
                        self._playing = False
                        self._agent_quiet_since = time.monotonic()
                    self.result.clears.append((now - self.t0, dropped))
                    self.result.checkpoints_discarded.extend(discarded)
                    self.note(f"clearAudio: dropped {dropped:.0f} ms unplayed"
                              + (f", discarded checkpoints {discarded}" if discarded else ""))
                    await self._ack(done)
                    self._seq += 1
                    await self.send_raw(wire.cleared_audio(seq=self._seq,
                                                           stream_id=self.stream_id))
                    self.note("clearedAudio sent")
                elif event == "sendDTMF":
                    digits = str(msg.get("dtmf", ""))
                    self.result.dtmf_received.append(digits)
                    self.note(f"server sends DTMF {digits!r}")
                else:
                    self.note(f"server sent unknown event {event!r}")
        except ConnectionClosed:
            pass
        finally:
            self.result.close_code = ws.close_code
            self.result.close_reason = ws.close_reason or ""
            if not self.result.closed_by:
                self.result.closed_by = "server"
                self._hangup_cause = ("NORMAL_CLEARING", "4010", "End Of XML Instructions",
                                      "Plivo")
            self.note(f"stream closed by {self.result.closed_by} (code {ws.close_code}"
                      + (f", {ws.close_reason!r}" if ws.close_reason else "") + ")")
            self._closed.set()

    async def _on_play(self, msg: dict[str, Any], now: float) -> None:
        assert self.far is not None and self.codec is not None
        media = msg.get("media") or {}
        ctype = str(media.get("contentType", ""))
        try:
            rate = int(media.get("sampleRate", 0))
        except (TypeError, ValueError):
            rate = 0
        if ctype != self.codec.encoding or rate != self.codec.sample_rate:
            err = f"playAudio {ctype}/{rate} does not match the stream's {self.codec.content_type}"
            self.result.play_errors.append(err)
            self.note(err)
            return
        try:
            payload = base64.b64decode(media.get("payload", ""), validate=True)
        except ValueError:
            self.result.play_errors.append("playAudio payload is not base64")
            return
        samples = self.codec.decode(payload)
        if not self._playing:
            self._playing = True
            self.agent_spoke = True
            self._agent_quiet_since = None
            self._agent_started_at = now
            self.result.agent_audio_starts.append(now - self.t0)
            self.note(f"agent audio starts (queued {self.far.queued_ms:.0f} ms)")
        self.result.play_frames += -(-len(samples) // self.codec.frame_samples)
        await self._ack(self.far.enqueue(samples, now))

    # --- callbacks ----------------------------------------------------------------------------
    async def _status_callback(self, event: str) -> None:
        url = self.result.answer.status_callback_url
        if not url:
            return
        params = {"Event": event, "CallUUID": self.call_uuid, "StreamID": self.stream_id,
                  "From": self.from_.lstrip("+"), "To": self.to.lstrip("+"),
                  "Direction": self.direction, "Timestamp": str(int(time.time()))}
        try:
            resp = await self.sim.request("POST", url, params)
            self.note(f"stream status {event} → HTTP {resp.status_code}")
        except httpx.HTTPError as exc:
            self.note(f"stream status {event} failed: {exc}")

    async def _hangup_callback(self) -> None:
        cause = self._hangup_cause[0]
        params = wire.hangup_params(self.call_uuid, to=self.to, from_=self.from_,
                                    direction=self.direction,
                                    duration_s=time.monotonic() - self.t0,
                                    cause=self._hangup_cause)
        try:
            resp = await self.sim.request("POST", self.sim.public_url + "/plivo/hangup", params)
            self.note(f"hangup callback ({cause}) → HTTP {resp.status_code}")
        except httpx.HTTPError as exc:
            self.note(f"hangup callback failed: {exc}")
