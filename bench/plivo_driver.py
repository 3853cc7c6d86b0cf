"""A lean Plivo load driver: many simulated callers in one asyncio loop.

Each caller behaves as Plivo does on the wire, in the wire formats of `app.simulator.protocol`
(which `app.simulator.far_end`, the tests' simulator, also speaks), but built for hundreds of
calls on one core:
- a V3-signed answer request (shared HTTP client), a V3-signed stream upgrade, `start`;
- 20 ms paced `media` frames from pre-encoded μ-law payloads (speech or silence); one pacing task
  serves every call, waking every 2 ms for the tenth of the calls whose phase it is, so frames of
  different calls do not arrive in lockstep and the driver does not need a timer per call;
- `playAudio` played on a simulated far-end clock (a play head per call); `checkpoint` acked with
  `playedStream` once the audio before it has played; `clearAudio` drops the unplayed audio,
  discards the checkpoints inside it and is answered with `clearedAudio`;
- a signed hangup callback when the caller hangs up; a REST hangup (fake Plivo REST, here in the
  driver) closes the stream the way Plivo would.

What it measures per call (all on the driver's monotonic clock, the "Plivo" view):
- v2v: the send time of the caller's last voiced frame → the first voiced `playAudio` after it;
- barge-in: the first voiced frame of speech sent while the agent is talking → `clearAudio`
  received (`clear_ms`), and → the moment the caller stops hearing the agent (`heard_ms`: the
  far-end buffer ran dry after the agent held its audio, or the clear, whichever came first);
- underruns: a `playAudio` that arrives after the far-end buffer ran dry in the middle of a
  segment (no checkpoint or clear since the previous frame), and the silence that caused.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from app.simulator import protocol as wire
from app.simulator.protocol import FRAME_S
from pipelines.audio.g711 import ulaw_decode, ulaw_encode
from pipelines.audio.resample import resample

PHASES = 10  # pacing slots per 20 ms frame (one every 2 ms)
RATE = 8000
FRAME_BYTES = 160
VOICED_PEAK = 500  # a playAudio frame whose peak exceeds this is agent speech, not silence
AGENT_QUIET_S = 0.4  # no agent audio queued or arriving for this long: the agent is done
CALLED = "14155550199"  # the number every caller dials (the agent is chosen by ?agent=)
ACCOUNT_ID = "MABENCH00000000000000"


@dataclass
class Utterance:
    """Pre-encoded caller speech: base64 μ-law payloads and where the voice is."""

    payloads: list[str]
    first_voiced: int  # index of the first voiced frame
    last_voiced: int  # index of the last voiced frame

    @classmethod
    def from_pcm16k(cls, pcm: np.ndarray, speech_start_ms: float, speech_end_ms: float
                    ) -> Utterance:
        x = resample(np.asarray(pcm, np.int16), 16000, RATE)
        x = np.concatenate([x, np.zeros((-len(x)) % FRAME_BYTES, np.int16)])
        payloads = [base64.b64encode(ulaw_encode(x[i:i + FRAME_BYTES])).decode()
                    for i in range(0, len(x), FRAME_BYTES)]
        first = int(speech_start_ms / 20)
        last = min(len(payloads) - 1, int(speech_end_ms / 20))
        return cls(payloads, first, last)


SILENCE = base64.b64encode(b"\xff" * FRAME_BYTES).decode()


@dataclass
class CallStats:
    v2v_ms: list[float] = field(default_factory=list)  # questions asked in silence
    v2v_barge_ms: list[float] = field(default_factory=list)  # questions that interrupted
    barge_clear_ms: list[float] = field(default_factory=list)
    barge_heard_ms: list[float] = field(default_factory=list)
    barges_unresolved: int = 0  # barge-ins the server never cleared (false interruption)
    underruns: int = 0
    underrun_ms: float = 0.0
    frames_sent: int = 0
    play_frames: int = 0
    checkpoints: int = 0
    clears: int = 0
    turns_done: int = 0
    completed: bool = False
    error: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0
    closed_by: str = ""


class Caller:
    """One simulated call's state (driven by the shared pacer and its own receive task)."""

    def __init__(self, driver: Driver, idx: int) -> None:
        self.d = driver
        self.idx = idx
        self.phase = idx % PHASES
        self.call_uuid = str(uuid.uuid4())
        self.stream_id = str(uuid.uuid4())
        self.ws: Any = None
        self.seq = 0
        self.chunk = 0
        self.t0 = 0.0
        self.stats = CallStats()
        # Caller audio: the utterance being spoken and the position in it.
        self.utt: Utterance | None = None
        self.pos = 0
        self.spoken = asyncio.Event()
        self.last_voiced_at: float | None = None  # awaiting the first voiced reply after this
        self.onset_at: float | None = None  # a barge-in being measured
        self.barging = False  # the current question interrupts the agent
        # Far end.
        self.play_head = 0.0
        self.in_segment = False
        self.last_play_at = 0.0
        self.pending: list[tuple[float, str]] = []  # checkpoints: (plays out at, name)
        self.voice_started = asyncio.Event()
        self.closed = asyncio.Event()

    # --- outgoing -------------------------------------------------------------------------
    def media_message(self, now: float) -> str | None:
        """The next 20 ms frame (speech or silence); notes voiced-frame send times."""
        utt = self.utt
        if utt is None:
            payload = SILENCE
        else:
            i = self.pos
            payload = utt.payloads[i]
            if i == utt.first_voiced and self.d.agent_talking(self, now):
                self.onset_at = now
            if i == utt.last_voiced:
                self.last_voiced_at = now
                self.voice_started.clear()
            self.pos = i + 1
            if self.pos >= len(utt.payloads):
                self.utt = None
                self.spoken.set()
        self.seq += 1
        self.chunk += 1
        self.stats.frames_sent += 1
        return wire.media_message(seq=self.seq, stream_id=self.stream_id, chunk=self.chunk,
                                  timestamp_ms=int((now - self.t0) * 1000), payload_b64=payload)

    async def send(self, text: str) -> None:
        if self.ws is not None and not self.closed.is_set():
            with contextlib.suppress(Exception):
                await self.ws.send(text)

    def say(self, utt: Utterance) -> None:
        self.utt = utt
        self.pos = 0
        self.spoken.clear()

    # --- incoming -------------------------------------------------------------------------
    async def receive(self) -> None:
        ws = self.ws
        try:
            async for raw in ws:
                now = time.monotonic()
                parsed = wire.server_message(raw)
                if parsed is None:
                    self.stats.error = "unparseable message from server"
                    continue
                event, msg = parsed
                if event == "playAudio":
                    self._on_play(msg["media"]["payload"], now)
                elif event == "checkpoint":
                    self.stats.checkpoints += 1
                    self.in_segment = False
                    self.pending.append((max(self.play_head, now), str(msg.get("name", ""))))
                    self.d.want_ack(self)
                elif event == "clearAudio":
                    await self._on_clear(now)
        except Exception as exc:
            if not self.closed.is_set():
                self.stats.error = self.stats.error or f"receive: {type(exc).__name__}"
        finally:
            if not self.stats.closed_by:
                self.stats.closed_by = "server"
            self.closed.set()

    def _on_play(self, b64: str, now: float) -> None:
        st = self.stats
        st.play_frames += 1
        if self.play_head < now:
            if self.in_segment:
                st.underruns += 1
                st.underrun_ms += (now - self.play_head) * 1000.0
            if self.onset_at is not None and self.play_head > self.onset_at:
                # The agent's audio ran dry after the barge-in onset: that is when the caller
                # stopped hearing it (it held its audio), even if more plays later (resume).
                st.barge_heard_ms.append((self.play_head - self.onset_at) * 1000.0)
                self.onset_at = None
                st.barges_unresolved += 1  # the agent resumed instead of clearing
            self.play_head = now
        samples = len(b64) * 3 // 4  # μ-law: one byte per sample
        self.play_head += samples / RATE
        self.in_segment = True
        self.last_play_at = now
        if self.last_voiced_at is not None and now > self.last_voiced_at:
            pcm = ulaw_decode(base64.b64decode(b64))
            if len(pcm) and int(np.abs(pcm.astype(np.int32)).max()) > VOICED_PEAK:
                (st.v2v_barge_ms if self.barging else st.v2v_ms).append(
                    (now - self.last_voiced_at) * 1000.0)
                self.last_voiced_at = None
                self.voice_started.set()

    async def _on_clear(self, now: float) -> None:
        st = self.stats
        st.clears += 1
        if self.onset_at is not None:
            st.barge_clear_ms.append((now - self.onset_at) * 1000.0)
            st.barge_heard_ms.append((max(self.onset_at, min(now, self.play_head))
                                      - self.onset_at) * 1000.0)
            self.onset_at = None
        played = [(t, n) for t, n in self.pending if t <= now]
        self.pending = played  # the rest is discarded with the audio (never acked)
        self.play_head = now
        self.in_segment = False
        await self.ack_due(now)
        self.seq += 1
        await self.send(wire.cleared_audio(seq=self.seq, stream_id=self.stream_id))

    async def ack_due(self, now: float) -> None:
        while self.pending and self.pending[0][0] <= now:
            _, name = self.pending.pop(0)
            self.seq += 1
            await self.send(wire.played_stream(seq=self.seq, stream_id=self.stream_id,
                                               name=name))

    def agent_quiet(self, now: float) -> bool:
        return now > self.play_head + AGENT_QUIET_S and now > self.last_play_at + AGENT_QUIET_S


@dataclass
class Script:
    """What every caller does: greeting, then `turns` questions; every `barge_every`-th
    question (after the first) is spoken `barge_after_s` into the previous answer."""

    question: Utterance
    turns: int = 4
    barge_every: int = 2
    barge_after_s: float = 0.8
    pause_s: tuple[float, float] = (0.3, 0.8)
    reply_timeout_s: float = 15.0


class Driver:
    caller_cls: type[Caller] = Caller  # a subclass may record more (bench/turntaking.py)

    def __init__(self, base_url: str, auth_token: str, *, agent: str, script: Script,
                 rest: Any = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth_token = auth_token
        self.agent = agent
        self.script = script
        self.rest = rest  # FakePlivoRest: REST hangups close the stream
        self.callers: list[Caller] = []
        self._slots: list[list[Caller]] = [[] for _ in range(PHASES)]
        self._acks: set[Caller] = set()
        self._http: httpx.AsyncClient | None = None
        self._pacer: asyncio.Task[None] | None = None
        self._acker: asyncio.Task[None] | None = None
        self.pacer_late_ms: list[float] = []

    # --- shared tasks -----------------------------------------------------------------------
    async def __aenter__(self) -> Driver:
        self._http = httpx.AsyncClient(timeout=30, trust_env=False,
                                       limits=httpx.Limits(max_connections=64))
        self._pacer = asyncio.create_task(self._pace(), name="pacer")
        self._acker = asyncio.create_task(self._ack_loop(), name="acker")
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in (self._pacer, self._acker):
            if t is not None:
                t.cancel()
                with contextlib.suppress(BaseException):
                    await t
        if self._http is not None:
            await self._http.aclose()

    async def _pace(self) -> None:
        step = FRAME_S / PHASES
        next_at = time.monotonic()
        slot = 0
        late_max = 0.0
        n = 0
        while True:
            now = time.monotonic()
            late_max = max(late_max, now - next_at)
            for c in self._slots[slot]:
                msg = c.media_message(now)
                if msg is not None and c.ws is not None:
                    try:
                        await c.ws.send(msg)
                    except Exception:
                        self._slots[slot].remove(c)
                        break
            slot = (slot + 1) % PHASES
            next_at += step
            n += 1
            if n % (PHASES * 50) == 0:  # once a second: worst pacing delay in that second
                self.pacer_late_ms.append(late_max * 1000.0)
                late_max = 0.0
            delay = next_at - time.monotonic()
            if delay < -0.2:  # far behind: resync rather than burst
                next_at = time.monotonic()
                delay = 0.0
            await asyncio.sleep(max(0.0, delay))

    def want_ack(self, c: Caller) -> None:
        self._acks.add(c)

    async def _ack_loop(self) -> None:
        while True:
            await asyncio.sleep(0.005)
            if not self._acks:
                continue
            now = time.monotonic()
            for c in list(self._acks):
                await c.ack_due(now)
                if not c.pending:
                    self._acks.discard(c)

    @staticmethod
    def agent_talking(c: Caller, now: float) -> bool:
        return c.play_head > now

    # --- Plivo HTTP -------------------------------------------------------------------------
    async def _post(self, path: str, params: dict[str, str]) -> httpx.Response:
        assert self._http is not None
        url = self.base_url + path
        h = {"User-Agent": wire.USER_AGENT,
             **wire.signed_headers(self.auth_token, "POST", url, params)}
        return await self._http.post(url, data=params, headers=h)

    # --- one call ---------------------------------------------------------------------------
    async def run_call(self, idx: int, on_done: Callable[[Caller], None] | None = None,
                       stop: asyncio.Event | None = None) -> Caller:
        c = self.caller_cls(self, idx)
        self.callers.append(c)
        c.t0 = c.stats.started_at = time.monotonic()
        try:
            await self._converse(c, stop)
            c.stats.completed = not c.stats.error
        except Exception as exc:
            c.stats.error = c.stats.error or f"{type(exc).__name__}: {exc}"[:200]
        finally:
            self._slots[c.phase] = [x for x in self._slots[c.phase] if x is not c]
            self._acks.discard(c)
            if c.ws is not None:
                if not c.closed.is_set():
                    c.stats.closed_by = c.stats.closed_by or "caller"
                with contextlib.suppress(Exception):
                    await c.ws.close()
            c.stats.ended_at = time.monotonic()
            if c.ws is not None:
                with contextlib.suppress(Exception):
                    await self._post("/plivo/hangup", wire.hangup_params(
                        c.call_uuid, to=CALLED, duration_s=c.stats.ended_at - c.t0))
            if on_done is not None:
                on_done(c)
        return c

    async def _answer(self, c: Caller) -> str:
        params = wire.answer_params(c.call_uuid, to=CALLED)
        if self.rest is not None:
            self.rest.live_calls.add(c.call_uuid)
        resp = await self._post(f"/plivo/answer?agent={self.agent}", params)
        ans = wire.parse_answer(resp.status_code, resp.text)
        if ans.kind == "http_error":
            raise RuntimeError(f"answer: HTTP {resp.status_code}")
        if ans.kind != "stream" or not ans.stream_url:
            raise RuntimeError(f"answer without <Stream>: {resp.text[:200]}")
        return ans.stream_url

    async def _converse(self, c: Caller, stop: asyncio.Event | None) -> None:
        url = await self._answer(c)
        # Connect to the server we were given, keep the path and token of the XML's URL.
        c.ws = await wire.open_stream(url, connect_url=wire.with_base(url, self.base_url),
                                      auth_token=self.auth_token, open_timeout=30,
                                      max_size=2**20, ping_interval=None)
        receiver = asyncio.create_task(c.receive(), name=f"recv-{c.idx}")
        try:
            c.seq += 1
            await c.ws.send(json.dumps({"sequenceNumber": c.seq, **wire.start_message(
                call_uuid=c.call_uuid, stream_id=c.stream_id, account_id=ACCOUNT_ID,
                media_format={"encoding": "audio/x-mulaw", "sampleRate": RATE})}))
            self._slots[c.phase].append(c)
            await self._script(c, stop)
        finally:
            receiver.cancel()
            with contextlib.suppress(BaseException):
                await receiver

    async def _wait(self, c: Caller, cond: Callable[[], bool], within_s: float) -> bool:
        deadline = time.monotonic() + within_s
        while not cond():
            if c.closed.is_set():
                raise RuntimeError("stream closed by the server")
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def _script(self, c: Caller, stop: asyncio.Event | None) -> None:
        s = self.script
        rnd = random.Random(c.idx)
        # Greeting: wait for it to start and finish.
        if not await self._wait(c, lambda: c.stats.play_frames > 0, s.reply_timeout_s):
            raise RuntimeError("no greeting")
        await self._wait(c, lambda: c.agent_quiet(time.monotonic()), 60)
        turn = 0
        barge_next = False
        while turn < s.turns and not (stop is not None and stop.is_set()):
            if not barge_next:
                await asyncio.sleep(rnd.uniform(*s.pause_s))
            c.barging = barge_next
            c.say(s.question)
            await self._wait(c, c.spoken.is_set, 30)
            turn += 1
            got = await self._wait(c, c.voice_started.is_set, s.reply_timeout_s)
            if not got:
                c.stats.error = f"no reply to turn {turn}"
                return
            c.stats.turns_done = turn
            barge_next = (s.barge_every > 0 and turn < s.turns
                          and (turn + 1) % s.barge_every == 0)
            if barge_next:
                await asyncio.sleep(s.barge_after_s)
            else:
                await self._wait(c, lambda: c.agent_quiet(time.monotonic()), 60)
        if c.onset_at is not None:
            c.stats.barges_unresolved += 1


def percentile(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    return float(np.percentile(np.asarray(xs, dtype=np.float64), p))
