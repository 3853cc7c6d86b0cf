"""Paced playout: at most max_ahead_ms queued at Plivo, ordered checkpoint acks, and clear().

First against the simulator's playout model in a loopback (no sockets, one clock), then end to
end through the real server and the simulator with a scripted call runner.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time

import numpy as np
import pytest

from app.simulator.playout import FarEndPlayout
from app.telephony.plivo.codec import StreamCodec
from app.telephony.plivo.playout import BATCH_FRAMES, PlivoPlayout
from pipelines.ports import PlayoutSink
from tests.telephony.audio_checks import heard_ms, last_heard_ms, tone
from tests.telephony.conftest import AGENT_NUMBER, Edge
from tests.telephony.scripted import ScriptRunner

MULAW = StreamCodec("audio/x-mulaw", 8000)

# The writer guarantees max_ahead_ms on its own clock at send time. The far end measures at
# arrival; when the far buffer had run dry, a frame that arrives late (network, or here this
# shared 2-core machine descheduling the process between the two clock reads) starts playing
# later than the writer assumed, and that lateness shows up as extra queue. The checks allow
# one frame of such jitter; the writer's own accounting is checked exactly.
JITTER_MS = 20.0


class Loopback:
    """PlivoPlayout wired straight into a FarEndPlayout (Plivo's buffer) on one clock."""

    def __init__(self, max_ahead_ms: int = 200, codec: StreamCodec = MULAW,
                 local_buffer_ms: int = 5000) -> None:
        # A deep local buffer by default: the tests below hand over seconds of audio at once
        # (a TTS still streaming) and check what a clear does with all of it.
        self.codec = codec
        self.far = FarEndPlayout(codec.sample_rate)
        self.sent: list[dict] = []
        self.frames_sent = 0  # 20 ms frames in the playAudio messages
        self.playout = PlivoPlayout(self.send, codec, "stream-1", max_ahead_ms=max_ahead_ms,
                                    local_buffer_ms=local_buffer_ms)
        self._ticker = asyncio.create_task(self._tick())

    async def send(self, text: str) -> None:
        msg = json.loads(text)
        self.sent.append(msg)
        now = time.monotonic()
        acks: list[str] = []
        if msg["event"] == "playAudio":
            assert msg["media"]["contentType"] == self.codec.encoding
            assert msg["media"]["sampleRate"] == self.codec.sample_rate
            payload = base64.b64decode(msg["media"]["payload"])
            # Whole 20 ms frames, a few per message at most.
            assert len(payload) % self.codec.frame_bytes == 0
            assert 0 < len(payload) <= BATCH_FRAMES * self.codec.frame_bytes
            self.frames_sent += len(payload) // self.codec.frame_bytes
            acks = self.far.enqueue(self.codec.decode(payload), now)
        elif msg["event"] == "checkpoint":
            acks = self.far.checkpoint(msg["name"], now)
        elif msg["event"] == "clearAudio":
            _, acks, _ = self.far.clear(now)
            self.playout.on_cleared()
        for name in acks:
            self.playout.on_played(name)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.005)
            for name in self.far.advance():
                self.playout.on_played(name)

    async def close(self) -> None:
        self._ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._ticker
        await self.playout.close()


async def _write_chunked(sink: PlayoutSink, x: np.ndarray, rate: int, chunk_ms: int = 100):
    n = rate * chunk_ms // 1000
    for i in range(0, len(x), n):
        await sink.write(x[i : i + n], rate)


async def test_playout_is_a_playout_sink():
    lb = Loopback()
    assert isinstance(lb.playout, PlayoutSink)
    await lb.close()


async def test_pacing_acks_and_resampling_loopback():
    lb = Loopback(max_ahead_ms=200)
    p = lb.playout
    segments = [("a", 1000, 1.0, 24000), ("b", 500, 0.4, 16000), ("c", 1500, 0.2, 8000)]
    for name, freq, secs, rate in segments:
        await p.start_segment(name)
        await _write_chunked(p, tone(freq, secs, rate), rate)
        await p.end_segment()
    assert not p.is_idle()
    for name, *_ in segments:
        await asyncio.wait_for(p.wait_played(name), 10)
    await asyncio.sleep(0.05)
    assert p.is_idle()
    assert lb.far.max_queued_ms <= 200.0 + JITTER_MS
    assert p.stats.max_ahead_ms_seen <= 200.0 + 1e-6
    assert p.stats.acked_order == ["a", "b", "c"]
    assert [p.played_ms(n) for n, *_ in segments] == [1000.0, 400.0, 200.0]
    # checkpoints went out right after each segment's last frame
    events = [m["event"] if m["event"] != "checkpoint" else m["name"] for m in lb.sent]
    assert lb.frames_sent == p.stats.frames_sent == 50 + 20 + 10
    # fewer messages than frames: once the far end held enough, frames went out together
    assert events.count("playAudio") == p.stats.messages_sent < lb.frames_sent
    plays = [len(base64.b64decode(m["media"]["payload"])) // MULAW.frame_bytes
             for m in lb.sent if m["event"] == "playAudio"]
    a, b = events.index("a"), events.index("b")
    assert sum(plays[:a]) == 50 and sum(plays[:b - 1]) == 70 and events[-1] == "c"
    assert events[a + 1:b].count("playAudio") == b - a - 1  # nothing else between checkpoints
    rec = lb.far.recording()
    for _name, freq, secs, _ in segments:
        assert abs(heard_ms(rec, 8000, freq) - secs * 1000) <= 30
    await lb.close()


async def test_clear_stops_within_a_frame_and_reports_heard_ms():
    lb = Loopback(max_ahead_ms=200)
    p = lb.playout
    await p.start_segment("long")  # TTS still streaming into it when the caller barges in
    await _write_chunked(p, tone(1000, 3.0, 16000), 16000)
    await asyncio.sleep(0.7)
    heard = await p.clear()
    await asyncio.wait_for(p.wait_played("long"), 1)  # resolved by the clear, not hanging
    await p.write(tone(1000, 0.5, 16000), 16000)  # late TTS audio for the cleared segment
    await p.end_segment()  # ...and no checkpoint for it
    await asyncio.sleep(0.3)
    rec = lb.far.recording()
    assert 500 <= heard <= 1000
    assert abs(last_heard_ms(rec, 8000, 1000) - (lb.far.played_ms)) <= 20
    assert abs(heard_ms(rec, 8000, 1000) - heard) <= 20
    assert p.played_ms("long") == heard
    assert "long" not in p.stats.acked_order
    assert p.stats.clears == 1 and p.stats.clears_acked == 1
    sent_after_clear = lb.sent[[m["event"] for m in lb.sent].index("clearAudio") + 1 :]
    assert sent_after_clear == []
    # the next segment plays normally
    await p.start_segment("next")
    await _write_chunked(p, tone(500, 0.3, 16000), 16000)
    await p.end_segment()
    await asyncio.wait_for(p.wait_played("next"), 5)
    assert p.stats.acked_order == ["next"] and p.played_ms("next") == 300.0
    assert await p.clear() == 0.0  # nothing playing: nothing to clear
    await lb.close()


async def test_speech_after_a_clear_does_not_wait_for_the_feeders_nap():
    # In steady state the feeder sleeps until a whole message fits (up to BATCH_FRAMES frames).
    # A clear empties Plivo's buffer, so what is written next (a ducked resume) must go out on
    # the next turns of the event loop, not when that sleep would have ended.
    lb = Loopback(max_ahead_ms=200)
    p = lb.playout
    await p.start_segment("s1")
    await _write_chunked(p, tone(1000, 2.0, 16000), 16000)
    await asyncio.sleep(0.5)
    assert p._napping is not None  # waiting for room, Plivo holding more than LOW_WATER_S
    await p.clear()
    await p.start_segment("s1~1")
    await _write_chunked(p, tone(1000, 0.2, 16000), 16000)
    for _ in range(10):  # no time passes: only the tasks that are ready run
        await asyncio.sleep(0)
    events = [m["event"] for m in lb.sent]
    assert "playAudio" in events[events.index("clearAudio"):]
    await lb.close()


async def test_resume_after_a_clear_goes_into_a_new_segment_while_the_cut_one_is_open():
    # The engine's barge-in: clear at the hold (the segment is still being written), then on a
    # false interruption re-send from the heard position in a new segment and carry on.
    lb = Loopback(max_ahead_ms=200)
    p = lb.playout
    await p.start_segment("s1")
    await _write_chunked(p, tone(1000, 1.0, 16000), 16000)
    await asyncio.sleep(0.5)
    heard = await p.clear()
    assert 300 <= heard <= 700
    await asyncio.sleep(0.2)
    await p.start_segment("s1~1")  # no end_segment for the cut one: it is simply dropped
    await _write_chunked(p, tone(1000, 1.0 - heard / 1000, 16000), 16000)
    await p.end_segment()
    await asyncio.wait_for(p.wait_played("s1~1"), 5)
    assert p.stats.acked_order == ["s1~1"]
    assert p.played_ms("s1") == heard
    assert p.played_ms("s1~1") == pytest.approx(1000 - heard, abs=20)
    rec = lb.far.recording()
    assert abs(heard_ms(rec, 8000, 1000) - 1000) <= 40  # heard once in all, in two parts
    await lb.close()


async def test_smaller_max_ahead_is_respected():
    lb = Loopback(max_ahead_ms=60)
    await lb.playout.start_segment("s")
    await lb.playout.write(tone(700, 0.5, 22050), 22050)
    await lb.playout.end_segment()
    await asyncio.wait_for(lb.playout.wait_played("s"), 5)
    assert lb.far.max_queued_ms <= 60.0 + JITTER_MS
    assert lb.playout.stats.max_ahead_ms_seen <= 60.0 + 1e-6
    await lb.close()


# --- end to end -----------------------------------------------------------------------------
async def test_pacing_and_acks_through_the_server(edge: Edge):
    async def script(info, transport, out):
        p = transport.playout
        for name, freq, secs in (("s1", 1000, 1.2), ("s2", 500, 0.4), ("s3", 1500, 0.3)):
            await p.start_segment(name)
            await _write_chunked(p, tone(freq, secs, 22050), 22050)
            await p.end_segment()
        for name in ("s1", "s2", "s3"):
            await p.wait_played(name)
        out["played"] = [p.played_ms(n) for n in ("s1", "s2", "s3")]
        await transport.hangup("script_done")
        return "script_done"

    runner = ScriptRunner(script)
    edge.server.state.calls = runner
    call = edge.wire(edge.sim.call(to=AGENT_NUMBER))
    async with call:
        await call.wait_closed(within_s=15)
    r = call.result
    assert r.checkpoints_received == ["s1", "s2", "s3"]
    assert r.checkpoints_acked == ["s1", "s2", "s3"]
    assert runner.result["played"] == [1200.0, 400.0, 300.0]
    assert 150 <= r.max_queued_ms <= 200 + JITTER_MS
    assert all(q <= 200 + JITTER_MS for _, q in r.queued_samples)
    assert abs(heard_ms(r.heard, 8000, 1000) - 1200) <= 30
    assert r.play_errors == []


async def test_clear_through_the_server(edge: Edge):
    async def script(info, transport, out):
        p = transport.playout
        await p.start_segment("long")
        # The TTS is still streaming in (the playout paces the writer) when the clear comes.
        writer = asyncio.create_task(_write_chunked(p, tone(1000, 3.0, 24000), 24000))
        await asyncio.sleep(0.8)
        out["heard"] = await p.clear()
        await writer  # its remaining audio is dropped: the segment was cleared
        await p.end_segment()
        await asyncio.sleep(0.4)
        await p.start_segment("after")
        await _write_chunked(p, tone(500, 0.3, 24000), 24000)
        await p.end_segment()
        await p.wait_played("after")
        out["cleared_acks"] = p.stats.clears_acked
        await transport.hangup("script_done")
        return "script_done"

    runner = ScriptRunner(script)
    edge.server.state.calls = runner
    call = edge.wire(edge.sim.call(to=AGENT_NUMBER))
    async with call:
        await call.wait_closed(within_s=15)
    r = call.result
    heard = runner.result["heard"]
    assert len(r.clears) == 1
    _, dropped = r.clears[0]
    assert 0 < dropped <= 200 + JITTER_MS  # only what was queued ahead had to be dropped
    # the caller heard what the server says they heard, to within one frame (+ jitter)
    assert abs(heard_ms(r.heard, 8000, 1000) - heard) <= 20 + JITTER_MS
    # its checkpoint was still queued behind unsent audio, so it never went out
    assert r.checkpoints_received == ["after"] and r.checkpoints_acked == ["after"]
    assert runner.result["cleared_acks"] == 1
    assert abs(heard_ms(r.heard, 8000, 500) - 300) <= 30


async def test_write_pushes_back_so_a_writer_stays_within_the_budget():
    """The playout is the engine's one pacing clock: a writer handing it audio as fast as it
    can is held to max_ahead_ms at the far end plus the small local budget."""
    lb = Loopback(max_ahead_ms=200, local_buffer_ms=60)  # the playout's own default
    p = lb.playout
    frame = tone(700, 0.02, 8000)
    await p.start_segment("a")
    written, worst = 0.0, 0.0
    for _ in range(75):  # 1.5 s
        await p.write(frame, 8000)
        written += 20.0
        worst = max(worst, written - p.played_ms("a"))
    await p.end_segment()
    await asyncio.wait_for(p.wait_played("a"), 10)
    assert worst <= 200.0 + p.local_buffer_frames * 20.0 + 20.0 + JITTER_MS
    assert p.played_ms("a") == 1500.0
    await lb.close()
