"""A cloud-provider rig for end-to-end calls: the real server, fake vendors, the Plivo simulator.

    async with cloud_rig(settings_factory, monkeypatch) as rig:
        async with rig.call() as call:            # a simulated inbound call
            await rig.wait_greeting(call)
            rig.el.fail_next("stream-input", Failure("hang"))
            q = await rig.ask(call, QUESTION)     # caller speaks; waits for the agent's answer
        ...

The agent's providers are cloud adapters pointed at local fakes of their vendors (each on its own
thread, see tests/fakes/vendor_base.py), each primary with a fallback of another vendor:

    stt: deepgram   → openai (batch transcription)
    llm: openai     → anthropic
    tts: elevenlabs → cartesia

Each TTS fake speaks its own pure tone (ElevenLabs 440 Hz, Cartesia 660 Hz), so the caller-side
recording shows which provider was heard and when. The caller's question is real synthesised
speech (tests/speech.py), so Silero VAD and smart-turn decide the turn exactly as on a real call;
the STT fakes return the scripted transcript for it.

Everything published on the event bus is collected (`rig.events`); `rig.session()` reads
GET /v1/sessions/{id}; a REST hangup from the server (fake Plivo REST) ends the simulated call the
way Plivo would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest

from app.config import Settings
from app.events.bus import Envelope
from app.simulator.far_end import PlivoSimulator, SimCall
from providers.fallback import COOLDOWNS
from tests.conftest import TEST_ADMIN_KEY
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.fakes.fake_cartesia import FakeCartesia
from tests.fakes.fake_deepgram import FakeDeepgram
from tests.fakes.fake_elevenlabs import FakeElevenLabs
from tests.fakes.fake_openai import FakeOpenAI
from tests.fakes.plivo_rest import FakePlivoRest, run_fake_plivo_rest
from tests.fakes.vendor_base import FAKE_API_KEY, Failure
from tests.live_server import LiveServer, run_live_server
from tests.speech import speech_bounds_ms, synthesize, with_silence

KEY_ENV = "PB_E2E_VENDOR_KEY"
AGENT_NUMBER = "+14155550142"
CALLER = "+14155550100"
ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}

QUESTION = "What are your opening hours?"
GREETING = "Hello, thanks for calling."
ANSWER = "We are open from nine to five on weekdays. On Saturdays we open at ten."
FALLBACK_ANSWER = "We open at nine and close at five. Saturdays we open at ten."
APOLOGY = "Sorry, I'm having trouble right now. Could you say that again?"
FAILURE_GOODBYE = "Sorry, we have a technical problem. Please call back later. Goodbye."

EL_HZ = 440.0  # what the primary TTS (ElevenLabs) "says"
CARTESIA_HZ = 660.0  # what the fallback TTS (Cartesia) "says"
MS_PER_CHAR = 30.0  # speaking rate of the TTS fakes

# The recording is analysed in 20 ms windows; a window is agent audio when its RMS is above
# this (the fakes' tones have RMS ≈ 5000; the simulator records exact zeros for silence).
WINDOW_S = 0.02
LOUD_RMS = 500.0


def tone_render(freq: float, ms_per_char: float = MS_PER_CHAR) -> Callable[[str, int], np.ndarray]:
    """A TTS fake's voice: `freq` Hz for `ms_per_char` per character, 10 ms fades at the edges
    (so a sentence boundary is not a click, and a silence hole inside speech is real)."""

    def render(text: str, rate: int) -> np.ndarray:
        n = max(1, int(len(text) * ms_per_char * rate / 1000))
        t = np.arange(n, dtype=np.float64) / rate
        x = 8000.0 * np.sin(2 * math.pi * freq * t)
        ramp = min(n // 2, rate // 100)
        if ramp:
            env = np.linspace(0.0, 1.0, ramp)
            x[:ramp] *= env
            x[n - ramp:] *= env[::-1]
        return x.astype(np.int16)

    return render


@dataclass
class Question:
    """One caller utterance as streamed: when its speech ended on the caller's clock."""

    text: str
    speech_end: float  # time.monotonic() of the end of the spoken words
    duration_s: float


@dataclass
class Rig:
    server: LiveServer
    rest: FakePlivoRest
    sim: PlivoSimulator
    http: httpx.AsyncClient
    dg: FakeDeepgram
    oa: FakeOpenAI  # primary LLM
    oa_stt: FakeOpenAI  # fallback STT (batch transcription)
    anth: FakeAnthropic
    el: FakeElevenLabs
    cart: FakeCartesia
    agent_id: str
    timeout_s: float
    events: list[Envelope] = field(default_factory=list)
    calls: dict[str, SimCall] = field(default_factory=dict)

    # -- calls ---------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def call(self) -> AsyncIterator[SimCall]:
        call = self.sim.call(to=AGENT_NUMBER, from_=CALLER)
        self.calls[call.call_uuid] = call
        self.rest.live_calls.add(call.call_uuid)  # Plivo knows the call it is connecting
        async with call:
            yield call

    async def _on_rest_hangup(self, call_uuid: str) -> None:
        call = self.calls.get(call_uuid)
        if call is not None:
            await call.remote_hangup()

    def session_id(self, call: SimCall) -> str:
        for env in self.events:
            if env.type == "session.started" and env.event.payload().get("call_uuid") == \
                    call.call_uuid:
                return env.session_id
        raise AssertionError("no session.started for this call")

    def of(self, call: SimCall, type_: str | None = None) -> list[dict[str, Any]]:
        """Payloads of this call's events (optionally of one type), in publish order."""
        sid = self.session_id(call)
        return [{"type": e.type, "ts": e.event.ts, **e.event.payload()} for e in self.events
                if e.session_id == sid and (type_ is None or e.type == type_)]

    async def wait_event(self, call: SimCall, type_: str, count: int = 1,
                         within_s: float = 20.0, where: Callable[[dict[str, Any]], bool]
                         = lambda d: True) -> list[dict[str, Any]]:
        deadline = time.monotonic() + within_s
        while True:
            with contextlib.suppress(AssertionError):
                got = [d for d in self.of(call, type_) if where(d)]
                if len(got) >= count:
                    return got
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{count}× {type_} not seen within {within_s}s; events: "
                    + ", ".join(e.type for e in self.events))
            await asyncio.sleep(0.01)

    async def wait_greeting(self, call: SimCall) -> None:
        """Until the greeting has been played out at the caller's end, and the host has
        pre-rendered the agent's failure goodbye (app/calls/clips.py) — so failures armed
        from here on strike the conversation, not that background request."""
        await self.wait_event(call, "agent.speech_completed",
                              where=lambda d: d.get("text") == GREETING)
        await self.wait_quiet(call)
        host = self.server.state.calls
        await call.wait_for(lambda: len(host.clips) > 0, 10.0)  # type: ignore[union-attr]

    async def vendor_sockets_closed(self, within_s: float = 5.0) -> None:
        """Every WebSocket the call opened to a vendor (handshakes it gave up on included) has
        been closed by our side; otherwise fail naming the sockets still open."""
        fakes = (self.dg, self.el, self.cart)
        deadline = time.monotonic() + within_s
        while True:
            still = [fake.describe(r) for fake in fakes for r in fake.open_sockets()]
            if not still:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"vendor sockets still open after {within_s:g}s:\n  "
                                     + "\n  ".join(still))
            await asyncio.sleep(0.01)

    async def streamed_events(self, call: SimCall, types: str) -> list[dict[str, Any]]:
        """The call's events of `types` as `WS /v1/sessions/{id}/events` delivers them (the
        session's buffered history is replayed; the stream closes after session.ended)."""
        from websockets.asyncio.client import connect

        url = (f"{self.server.ws_url}/v1/sessions/{self.session_id(call)}/events"
               f"?types={types},session.ended")
        out: list[dict[str, Any]] = []
        async with connect(url, additional_headers=ADMIN, proxy=None) as ws:
            async with asyncio.timeout(10):
                async for raw in ws:
                    frame = json.loads(raw)
                    if frame.get("type") != "stream.subscribed":
                        out.append(frame)
        return out

    def rest_hangups(self, call: SimCall) -> list[Any]:
        return self.rest.calls_to("DELETE", f"/Call/{call.call_uuid}/")

    async def wait_quiet(self, call: SimCall, within_s: float = 10.0) -> None:
        assert call.far is not None
        await call.wait_for(lambda: call.far.queued_ms == 0, within_s)

    async def ask(self, call: SimCall, text: str = QUESTION) -> Question:
        """The caller speaks `text` (real synthesised speech, 1 s of silence after it)."""
        audio = with_silence(synthesize(text), lead_ms=200, trail_ms=1000)
        _, end_ms = speech_bounds_ms(audio)
        sent_before = call.result.media_sent
        duration = call.say(audio, 16000)
        # `say` queues; the simulator streams 20 ms frames in real time from the next tick.
        await call.wait_for(lambda: call.result.media_sent > sent_before, 5.0)
        started = time.monotonic()
        return Question(text, started + end_ms / 1000.0, duration)

    async def wait_answered(self, call: SimCall, turns: int = 1, within_s: float = 30.0) -> None:
        """Until `turns` answers have completed and their audio has been played out."""
        await self.wait_event(call, "turn.completed", count=turns, within_s=within_s)
        await self.wait_quiet(call)

    async def end(self, call: SimCall) -> dict[str, Any]:
        """Caller hangs up (if the server has not already); returns GET /v1/sessions/{id}."""
        await call.hangup()
        await self.wait_event(call, "session.ended")
        events = self.server.state.events
        assert events is not None
        await events.flush()
        return await self.session(call)

    async def session(self, call: SimCall) -> dict[str, Any]:
        r = await self.http.get(f"/v1/sessions/{self.session_id(call)}")
        assert r.status_code == 200, r.text
        return r.json()


# ---------------------------------------------------------------------------------------------
# Recording analysis
# ---------------------------------------------------------------------------------------------


@dataclass
class Heard:
    """The caller-side recording as 20 ms windows on the monotonic clock."""

    samples: np.ndarray
    rate: int
    t0: float  # time.monotonic() of sample 0

    @property
    def window(self) -> int:
        return int(self.rate * WINDOW_S)

    def loud(self) -> np.ndarray:
        w = self.window
        n = len(self.samples) // w
        blocks = self.samples[: n * w].astype(np.float64).reshape(n, w)
        return np.sqrt((blocks**2).mean(axis=1)) > LOUD_RMS

    def at(self, t: float) -> int:
        return max(0, int((t - self.t0) / WINDOW_S))

    def time_of(self, index: int) -> float:
        return self.t0 + index * WINDOW_S

    def first_audio_after(self, t: float) -> float | None:
        loud = self.loud()
        idx = np.flatnonzero(loud[self.at(t):])
        return None if idx.size == 0 else self.time_of(self.at(t) + int(idx[0]))

    def speech_after(self, t: float) -> tuple[float, float] | None:
        """(start, end) of all agent audio after `t`."""
        loud = self.loud()
        start = self.at(t)
        idx = np.flatnonzero(loud[start:])
        if idx.size == 0:
            return None
        return self.time_of(start + int(idx[0])), self.time_of(start + int(idx[-1]) + 1)

    def longest_hole(self, start: float, end: float) -> float:
        """Longest run of silence (seconds) strictly inside [start, end)."""
        loud = self.loud()[self.at(start): self.at(end)]
        longest = run = 0
        for v in loud:
            run = 0 if v else run + 1
            longest = max(longest, run)
        return longest * WINDOW_S

    def dominant_hz(self, start: float, end: float) -> float:
        seg = self.samples[int((start - self.t0) * self.rate): int((end - self.t0) * self.rate)]
        if len(seg) < self.rate // 10:
            return 0.0
        spec = np.abs(np.fft.rfft(seg.astype(np.float64) * np.hanning(len(seg))))
        return float(np.fft.rfftfreq(len(seg), 1.0 / self.rate)[int(np.argmax(spec))])

    def seconds_of(self, freq: float, start: float, end: float, tol_hz: float = 40.0) -> float:
        """Seconds of loud audio between start and end whose pitch is `freq` (per 100 ms)."""
        total = 0.0
        t = start
        while t + 0.1 <= end:
            loud = self.loud()[self.at(t): self.at(t + 0.1)]
            if loud.size and loud.all() and abs(self.dominant_hz(t, t + 0.1) - freq) < tol_hz:
                total += 0.1
            t += 0.1
        return total


def heard(call: SimCall) -> Heard:
    """What the caller has heard so far (the simulator renders it every 5 ms; never advance
    the playout from here: that would swallow checkpoint acks)."""
    assert call.far is not None, "the call never connected"
    return Heard(call.far.recording(), call.result.sample_rate, call.far.t0)


# ---------------------------------------------------------------------------------------------
# Failure scripts
# ---------------------------------------------------------------------------------------------

# How far into the caller's question a mid-utterance STT failure strikes.
CUT_INTO_QUESTION_S = 0.7


@dataclass
class Cut:
    """A scripted provider failure: armed before the call (`arm_failure`), triggered right
    before the caller's question (`before_question`) or in the middle of it
    (`during_question`)."""

    before: Callable[[], None] = lambda: None
    during: Callable[[], None] | None = None

    def before_question(self) -> None:
        self.before()

    async def during_question(self) -> None:
        if self.during is not None:
            await asyncio.sleep(CUT_INTO_QUESTION_S)
            self.during()


def arm_failure(rig: Rig, kind: str, mode: str) -> Cut:
    """The primary of `kind` fails by `mode` ("status": HTTP 500 / refused upgrade, "hang": no
    answer, "drop": connection cut mid-stream) once the greeting has played.

    Deepgram's one WebSocket per call is opened when the call starts, so its failures are
    scripted on that connection up front (a standing `Failure` whose fields are flipped while
    the caller is talking: the fake reads them for every audio frame), and they strike in the
    middle of the caller's question. "status" there means: the socket drops and every
    reconnection is refused with 500; "drop": every reconnection is dropped as well.
    """
    if kind == "stt":
        live = Failure("drop", after=10**9)  # inert until flipped
        rig.dg.fail_next("listen", live)

        def strike() -> None:
            if mode == "status":
                rig.dg.fail_always("listen", Failure("status", status=500))
            elif mode == "drop":
                rig.dg.fail_always("listen", Failure("drop", after=0))
            if mode == "hang":
                live.kind = "hang"  # swallow everything from now on
            else:
                live.after = 0  # cut at the next audio frame

        return Cut(during=strike)
    vendor, endpoint = {"llm": (rig.oa, "chat"), "tts": (rig.el, "stream-input")}[kind]
    failure = {"status": Failure("status", status=500), "hang": Failure("hang"),
               "drop": Failure("drop", after=0 if kind == "llm" else 5)}[mode]
    if mode == "status":
        return Cut(before=lambda: vendor.fail_always(endpoint, failure))
    return Cut(before=lambda: vendor.fail_next(endpoint, failure))


# ---------------------------------------------------------------------------------------------
# The rig
# ---------------------------------------------------------------------------------------------


def agent_config(rig_urls: dict[str, str], timeout_s: float) -> dict[str, Any]:
    key = {"env": KEY_ENV}
    return {
        "name": "Cloud e2e",
        "prompt": "You are the receptionist of a small shop. Answer briefly.",
        "greeting": GREETING,
        "apology": APOLOGY,
        "failure_goodbye": FAILURE_GOODBYE,
        # The end of the question is decided by smart-turn; this only caps an unsure model.
        "turn": {"max_wait_ms": 1000},
        "idle": {"timeout_s": 60},
        "stt": {"provider": "deepgram", "api_key": key, "base_url": rig_urls["dg"],
                "timeout_s": timeout_s,
                "fallback": [{"provider": "openai", "api_key": key,
                              "base_url": rig_urls["oa_stt"], "model": "whisper-1"}]},
        "llm": {"provider": "openai", "api_key": key, "base_url": rig_urls["oa"],
                "model": "gpt-4o-mini", "timeout_s": timeout_s,
                "fallback": [{"provider": "anthropic", "api_key": key,
                              "base_url": rig_urls["anth"]}]},
        "tts": {"provider": "elevenlabs", "api_key": key, "base_url": rig_urls["el"],
                "output": "mulaw_8000", "timeout_s": timeout_s,
                "fallback": [{"provider": "cartesia", "api_key": key,
                              "base_url": rig_urls["cart"], "output": "pcm_16000"}]},
    }


@contextlib.asynccontextmanager
async def cloud_rig(settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch,
                    *, timeout_s: float = 1.0,
                    agent_overrides: dict[str, Any] | None = None) -> AsyncIterator[Rig]:
    monkeypatch.setenv(KEY_ENV, FAKE_API_KEY)
    COOLDOWNS.clear()  # process-wide: another test's outage must not shape this call
    fakes = [
        FakeDeepgram(default_transcript=QUESTION),
        FakeOpenAI(default_reply=ANSWER),
        FakeOpenAI(default_transcript=QUESTION),
        FakeAnthropic(default_reply=FALLBACK_ANSWER),
        FakeElevenLabs(render=tone_render(EL_HZ), ms_per_char=MS_PER_CHAR),
        FakeCartesia(render=tone_render(CARTESIA_HZ), ms_per_char=MS_PER_CHAR),
    ]
    with contextlib.ExitStack() as stack:
        for f in fakes:
            stack.enter_context(f)
        dg, oa, oa_stt, anth, el, cart = fakes
        urls = {"dg": dg.ws_base_url, "oa": oa.base_url, "oa_stt": oa_stt.base_url,
                "anth": anth.base_url, "el": el.ws_base_url, "cart": cart.ws_base_url}
        config = agent_config(urls, timeout_s)
        config.update(agent_overrides or {})
        if config.get("stt") is None:  # "no STT fallback": the primary alone
            config["stt"] = {k: v for k, v in agent_config(urls, timeout_s)["stt"].items()
                             if k != "fallback"}
        async with run_fake_plivo_rest() as rest:
            settings = settings_factory(plivo={"auth_id": rest.auth_id,
                                               "auth_token": rest.auth_token,
                                               "api_base_url": rest.api_base})
            async with run_live_server(settings) as server, httpx.AsyncClient(
                    base_url=server.base_url, headers=ADMIN, timeout=10) as http:
                r = await http.post("/v1/agents", json=config)
                assert r.status_code == 201, r.text
                agent_id = r.json()["id"]
                r = await http.put(f"/v1/numbers/{AGENT_NUMBER.replace('+', '%2B')}",
                                   json={"agent_id": agent_id})
                assert r.status_code == 201, r.text
                rig = Rig(server=server, rest=rest,
                          sim=PlivoSimulator(server.base_url, rest.auth_token), http=http,
                          dg=dg, oa=oa, oa_stt=oa_stt, anth=anth, el=el, cart=cart,
                          agent_id=agent_id, timeout_s=timeout_s)
                rest.on_hangup = rig._on_rest_hangup
                events = server.state.events
                assert events is not None
                events.bus.add_sink("e2e-test", rig.events.append)
                try:
                    yield rig
                finally:
                    for call in rig.calls.values():
                        await call.hangup()
                    COOLDOWNS.clear()
