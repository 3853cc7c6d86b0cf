"""Call recording on live calls: the real server and the Plivo simulator (Piper caller speech,
fake OpenAI / Deepgram / ElevenLabs). The recording is checked against the simulator's own
timeline of the call: where the caller's audio was sent and where the agent's audio played,
and what a barge-in's `clearAudio` dropped."""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from app.config import Settings
from app.simulator.far_end import SimCall
from tests.e2e.tools_fixtures import ADMIN, CallStack, Recorder, call_stack, of_type
from tests.events.local_http import LocalHttpServer, Received
from tests.speech import speech_bounds_ms, synthesize

pytestmark = pytest.mark.slow

RATE = 8000
CONSENT = "This call may be recorded."
GREETING = "Hi, this is the test line."
ALIGN_S = 0.1  # the brief: within ~100 ms of the simulator's timeline
LONG_ANSWER = ("Our store is open from nine in the morning until nine in the evening on "
               "weekdays, from ten until six on Saturdays, and from noon until five on Sundays, "
               "except on public holidays when we close early, so please check the website.")


def recording_block(channels: str = "stereo", consent: str | None = CONSENT) -> dict[str, Any]:
    return {"enabled": True, "channels": channels, "consent_message": consent}


def read_wav(path: str) -> tuple[np.ndarray, int]:
    with wave.open(path, "rb") as w:
        data = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        return data.reshape(-1, w.getnchannels()), w.getframerate()


def file_size(path: str) -> int:
    return Path(path).stat().st_size


def wav_files(folder: str) -> list[Path]:
    return list(Path(folder).glob("*.wav"))


def stream_start(call: SimCall) -> float:
    """When the stream's clock starts (sim seconds): `start` went out, caller audio began."""
    return next(e.t for e in call.result.timeline if e.what.startswith("start sent"))


def runs(x: np.ndarray, rate: int = RATE, *, gap_s: float = 0.15,
         level: float = 300.0) -> list[tuple[float, float]]:
    """(start, end) seconds of stretches of sound (20 ms RMS above `level`), short gaps merged."""
    hop = rate // 50
    n = len(x) // hop
    rms = np.sqrt(np.mean(x[:n * hop].astype(np.float64).reshape(n, hop) ** 2, axis=1))
    out: list[tuple[float, float]] = []
    for i in np.flatnonzero(rms > level):
        t = i * hop / rate
        if out and t - out[-1][1] <= gap_s:
            out[-1] = (out[-1][0], t + hop / rate)
        else:
            out.append((t, t + hop / rate))
    return out


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0


async def completed(rec: Recorder, sid: str) -> dict[str, Any]:
    env = (await rec.wait_type("recording.completed", sid=sid, within_s=30))[0]
    return env.event.payload()


async def caller_says(stack: CallStack, call: SimCall, text: str) -> tuple[float, float]:
    """The caller speaks; returns (first, last) second of audible speech on the sim's clock."""
    audio = synthesize(text)
    first_ms, last_ms = speech_bounds_ms(audio)
    lead = 0.2
    seconds = call.say(np.concatenate([np.zeros(3200, np.int16), audio,
                                       np.zeros(3200, np.int16)]), 16000)
    await asyncio.sleep(0.05)
    due = call.result.caller_audio_due[-1]
    await call.wait_said(within_s=seconds + 30)
    return due + lead + first_ms / 1000, due + lead + last_ms / 1000


async def test_stereo_recording_is_aligned_with_what_was_said_and_heard(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack:
        await stack.add_agent(recording=recording_block("stereo"), greeting=GREETING)
        rec = Recorder(stack)
        stack.deepgram.queue_transcript("What are your opening hours?")
        stack.openai.queue_chat("We open at nine.")
        async with stack.call() as call:
            sid = await stack.session_id(call)
            await rec.wait_type("agent.speech_completed", n=2, sid=sid)  # consent, greeting
            spoke = await caller_says(stack, call, "What are your opening hours?")
            await rec.wait_type("agent.speech_completed", n=3, sid=sid, within_s=30)
            await call.wait_agent_quiet(within_s=15)
            await asyncio.sleep(0.3)
        done = await completed(rec, sid)
        events = rec.session(sid)

        # The consent notice is heard, whole, before the greeting starts.
        started = of_type(events, "agent.speech_started")
        assert [e.event.text for e in started[:2]] == [CONSENT, GREETING]
        first_done = of_type(events, "agent.speech_completed")[0]
        assert first_done.event.segment_id == started[0].event.segment_id
        assert first_done.event.text == CONSENT
        assert events.index(first_done) < events.index(started[1])
        assert not of_type(events, "agent.speech_interrupted")
        # recording.completed comes after session.ended.
        types = [e.type for e in events]
        assert types.index("recording.completed") > types.index("session.ended")

        assert done["channels"] == "stereo" and done["format"] == "wav"
        assert done["location"] == str(Path(stack.state.settings.recordings.dir) / f"{sid}.wav")
        assert file_size(done["location"]) == done["bytes"]
        data, rate = read_wav(done["location"])
        assert rate == RATE and data.shape[1] == 2
        assert abs(len(data) / RATE - done["duration_s"]) < 0.01
        caller, agent = data[:, 0], data[:, 1]
        t0 = stream_start(call)

        # Left: the caller's speech, where the simulator sent it.
        left = runs(caller)
        assert len(left) == 1, left
        assert abs(left[0][0] - (spoke[0] - t0)) < ALIGN_S, (left, spoke[0] - t0)
        assert abs(left[0][1] - (spoke[1] - t0)) < ALIGN_S + 0.05, (left, spoke[1] - t0)

        # Right: the agent's audio, where the simulator played it: every stretch starts when
        # the simulator's playback of agent audio began, and matches what it says the caller
        # heard (consent + greeting back to back, then the answer).
        right = runs(agent)
        heard = [s - t0 for s in call.result.agent_audio_starts]
        assert len(right) == 2, (right, heard)
        for start, _ in right:
            assert min(abs(start - h) for h in heard) < ALIGN_S, (right, heard)
        offset = t0 - next(e.t for e in call.result.timeline
                           if e.what.startswith("stream connected"))
        sim_heard = [(a - offset, b - offset) for a, b in runs(call.result.heard)]
        assert len(sim_heard) == len(right), (right, sim_heard)
        for (a, b), (c, d) in zip(right, sim_heard, strict=True):
            assert abs(a - c) < ALIGN_S and abs(b - d) < ALIGN_S, (right, sim_heard)
        # Nothing of the agent leaks into the caller's side, or the other way round.
        a0, a1 = right[1]
        assert rms(caller[int(a0 * RATE):int(a1 * RATE)]) < 50

        # GET: the WAV as stored, and Ogg/Opus of the same length.
        async with httpx.AsyncClient(base_url=stack.server.base_url, headers=ADMIN) as c:
            r = await c.get(f"/v1/sessions/{sid}/recording")
            assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
            wav, wav_rate = sf.read(io.BytesIO(r.content), dtype="int16")
            assert wav_rate == RATE and wav.shape == data.shape
            r = await c.get(f"/v1/sessions/{sid}/recording", params={"format": "opus"})
            assert r.status_code == 200 and r.headers["content-type"] == "audio/ogg"
            opus, opus_rate = sf.read(io.BytesIO(r.content), dtype="int16")
            assert opus.shape[1] == 2
            assert abs(len(opus) / opus_rate - done["duration_s"]) < 0.1
            r = await c.get(f"/v1/sessions/{sid}/recording", params={"format": "mp3"})
            assert r.status_code == 422


async def test_barge_in_cleared_audio_is_not_in_the_recording(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack:
        await stack.add_agent(recording=recording_block("stereo", consent=None),
                              greeting=GREETING)
        rec = Recorder(stack)
        stack.deepgram.queue_transcript("When are you open?", "Thanks.")
        stack.openai.queue_chat(LONG_ANSWER, "You're welcome.")
        async with stack.call() as call:
            sid = await stack.session_id(call)
            await rec.wait_type("agent.speech_completed", sid=sid)
            await caller_says(stack, call, "When are you open?")
            await rec.wait_for(lambda es: any(e.type == "agent.speech_started"
                                              and e.event.text.startswith("Our store")
                                              for e in es), within_s=30)
            await asyncio.sleep(2.0)  # the long answer plays for a while...
            await caller_says(stack, call, "Thanks.")  # ...and the caller barges in
            await rec.wait_type("agent.speech_interrupted", sid=sid, within_s=20)
            await rec.wait_type("agent.speech_completed", n=2, sid=sid, within_s=30)
            await call.wait_agent_quiet(within_s=15)
            await asyncio.sleep(0.3)
        done = await completed(rec, sid)
        data, _ = read_wav(done["location"])
        agent = data[:, 1]
        t0 = stream_start(call)

        clears = [(t - t0, dropped) for t, dropped in call.result.clears if dropped > 0]
        assert clears, "the barge-in should have cleared audio Plivo still held"
        clear_at, dropped_ms = clears[0]
        assert dropped_ms >= 40
        later = [s - t0 for s in call.result.agent_audio_starts if s - t0 > clear_at]
        assert later, "the agent answered after the barge-in"
        # It was playing right up to the clear.
        assert rms(agent[int((clear_at - 0.3) * RATE):int((clear_at - 0.05) * RATE)]) > 1000
        # The interrupted answer lasts in the recording as long as the caller heard it.
        right = runs(agent)
        cut = next(r for r in right if r[0] < clear_at < r[1] + 0.1)
        assert abs(cut[1] - clear_at) < ALIGN_S, (cut, clear_at)
        # The reply comes after a real pause, no later than the caller heard it start. It may
        # be earlier: the recording places it when the server sent it, the simulator when the
        # frame arrived, and on a loaded machine delivery alone has taken over 100 ms.
        reply = next(r for r in right if r[0] > cut[1])
        assert cut[1] + 0.2 < reply[0] < later[0] + ALIGN_S, (cut, reply, later[0])
        # Between the two the agent channel is silent: nothing the clear dropped was recorded.
        quiet = agent[int((clear_at + 0.04) * RATE):int((reply[0] - 0.06) * RATE)]
        assert len(quiet) > RATE // 5 and rms(quiet) < 30, rms(quiet)


async def test_mono_recording_mixes_both_sides_and_reaches_the_webhook(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack:
        with LocalHttpServer() as hooks:
            await stack.add_agent(recording=recording_block("mono", consent=None),
                                  greeting=GREETING, webhook_url=hooks.url + "/events",
                                  webhook_events=["session.ended", "recording.*"])
            rec = Recorder(stack)
            stack.deepgram.queue_transcript("Hello there.")
            stack.openai.queue_chat("Hi.")
            async with stack.call() as call:
                sid = await stack.session_id(call)
                await rec.wait_type("agent.speech_completed", sid=sid)
                spoke = await caller_says(stack, call, "Hello there.")
                await rec.wait_type("agent.speech_completed", n=2, sid=sid, within_s=30)
                await call.wait_agent_quiet(within_s=15)
            done = await completed(rec, sid)

            def delivered(rs: list[Received]) -> list[dict[str, Any]]:
                return [json.loads(r.body) for r in rs]

            await hooks.wait_for(lambda rs: any(d["type"] == "recording.completed"
                                                for d in delivered(rs)), within_s=30)
            bodies = delivered(hooks.snapshot())
            assert [d["type"] for d in bodies] == ["session.ended", "recording.completed"]
            assert bodies[1]["session_id"] == sid and bodies[1]["data"] == done

        data, rate = read_wav(done["location"])
        assert data.shape[1] == 1 and rate == RATE and done["channels"] == "mono"
        t0 = stream_start(call)
        found = runs(data[:, 0])
        starts = [s - t0 for s in call.result.agent_audio_starts] + [spoke[0] - t0]
        assert len(found) == 3, found
        for s in starts:
            assert any(abs(a - s) < ALIGN_S for a, _ in found), (found, starts)


async def test_unwritable_recordings_dir_fails_the_recording_not_the_call(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.access(locked, os.W_OK):  # root ignores permissions: a file in the way instead
        locked.chmod(0o700)
        locked.rmdir()
        locked.write_text("not a directory")
    try:
        async with call_stack(settings_factory, monkeypatch,
                              recordings={"dir": str(locked / "sub")}) as stack:
            await stack.add_agent(recording=recording_block("stereo"), greeting=GREETING)
            rec = Recorder(stack)
            stack.deepgram.queue_transcript("Hello there.")
            stack.openai.queue_chat("Hi.")
            async with stack.call() as call:
                sid = await stack.session_id(call)
                await rec.wait_type("agent.speech_completed", n=2, sid=sid)
                await caller_says(stack, call, "Hello there.")
                await rec.wait_type("turn.completed", sid=sid, within_s=30)
                await call.wait_agent_quiet(within_s=15)
            failed = (await rec.wait_type("recording.failed", sid=sid, within_s=30))[0]
            assert failed.event.message
            events = rec.session(sid)
            ended = of_type(events, "session.ended")[0]
            assert ended.event.reason in ("caller_hangup", "stream_closed")
            assert not of_type(events, "recording.completed")
            await stack.settled()
            session = await stack.get(f"/v1/sessions/{sid}")
            assert session["status"] == "ended"
            assert len(session["turns"]) >= 2  # the call's records are all there
            async with httpx.AsyncClient(base_url=stack.server.base_url, headers=ADMIN) as c:
                r = await c.get(f"/v1/sessions/{sid}/recording")
            assert r.status_code == 404
            assert r.headers["content-type"].startswith("application/problem+json")
            assert "recording.failed" in r.json()["detail"]
    finally:
        if locked.is_dir():
            locked.chmod(0o700)


async def test_recording_stored_in_s3_and_streamed_back(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch,
        s3_endpoint: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    client.create_bucket(Bucket="pb-e2e")
    s3 = {"endpoint_url": s3_endpoint, "bucket": "pb-e2e", "prefix": "rec/",
          "access_key_id": "test", "secret_access_key": "test", "region": "us-east-1"}
    async with call_stack(settings_factory, monkeypatch, recordings={"s3": s3}) as stack:
        await stack.add_agent(recording=recording_block("stereo"), greeting=GREETING)
        rec = Recorder(stack)
        async with stack.call() as call:
            sid = await stack.session_id(call)
            await rec.wait_type("agent.speech_completed", n=2, sid=sid)
            await call.wait_agent_quiet(within_s=15)
        done = await completed(rec, sid)
        assert done["location"] == f"rec/{sid}.wav"
        obj = client.get_object(Bucket="pb-e2e", Key=done["location"])["Body"].read()
        assert len(obj) == done["bytes"]
        assert not wav_files(stack.state.settings.recordings.dir)
        async with httpx.AsyncClient(base_url=stack.server.base_url, headers=ADMIN) as c:
            r = await c.get(f"/v1/sessions/{sid}/recording")
            assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
            assert r.content == obj
            r = await c.get(f"/v1/sessions/{sid}/recording", params={"format": "opus"})
            assert r.status_code == 200 and r.headers["content-type"] == "audio/ogg"
            opus, opus_rate = sf.read(io.BytesIO(r.content), dtype="int16")
            assert abs(len(opus) / opus_rate - done["duration_s"]) < 0.1
            # The agent's other sessions were not recorded: 404 says so.
            await stack.add_agent(number="+14155550777", greeting=GREETING)
            async with stack.call(to="+14155550777") as call2:
                sid2 = await stack.session_id(call2)
                await rec.wait_type("agent.speech_completed", sid=sid2)
            await rec.wait_type("session.ended", sid=sid2)
            r = await c.get(f"/v1/sessions/{sid2}/recording")
            assert r.status_code == 404 and "recording.enabled" in r.json()["detail"]
            r = await c.get("/v1/sessions/nope/recording")
            assert r.status_code == 404 and "session 'nope'" in r.json()["detail"]
