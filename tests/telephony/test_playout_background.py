"""Background audio mixed by the playout (`audio.mix`): heard while the agent is silent, under the
agent's speech while it speaks, untouched by a barge-in clear, and invisible to the speech's
acks and played_ms. First in the loopback (PlivoPlayout into the simulator's model of Plivo's
buffer), then through the real server and the simulated far end."""

from __future__ import annotations

import asyncio
import base64

import numpy as np

from app.telephony.plivo.codec import L16, StreamCodec
from pipelines.audio.backgrounds import background
from pipelines.audio.g711 import ulaw_encode
from pipelines.audio.inbox import AudioFormat
from pipelines.audio.mixer import Background
from pipelines.audio.wav import wav_bytes
from pipelines.ports import BackgroundMixingSink
from tests.telephony.audio_checks import tone
from tests.telephony.conftest import AGENT_NUMBER, Edge
from tests.telephony.scripted import ScriptRunner
from tests.telephony.test_playout import Loopback

BED_HZ, VOICE_HZ = 300.0, 1000.0
RATE = 8000


def level(x: np.ndarray, freq: float, rate: int = RATE) -> float:
    """Amplitude of `freq` in `x` (a single-bin DFT)."""
    if not len(x):
        return 0.0
    k = np.exp(-2j * np.pi * freq * np.arange(len(x)) / rate)
    return float(np.abs(x.astype(np.float64) @ k) * 2 / len(x))


def window(rec: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    return rec[int(start_s * RATE):int(end_s * RATE)]


def bed(volume: float = 0.5) -> Background:
    return Background(tone(BED_HZ, 1.0, 16000, amp=8000), 16000, volume=volume)


async def test_background_plays_alone_then_under_speech_and_the_speech_is_accounted_alone():
    lb = Loopback(max_ahead_ms=200, local_buffer_ms=5000)
    p = lb.playout
    assert isinstance(p, BackgroundMixingSink)
    p.set_background(bed())
    await asyncio.sleep(0.6)
    assert p.is_idle()  # background is not speech
    silent_until = lb.far.played_ms / 1000
    await p.start_segment("s1")
    await p.write(tone(VOICE_HZ, 0.6, 16000), 16000)
    await p.end_segment()
    await asyncio.wait_for(p.wait_played("s1"), 5)
    assert p.played_ms("s1") == 600.0 and p.stats.acked_order == ["s1"]
    await asyncio.sleep(0.3)
    assert p.is_idle()
    rec = lb.far.recording()
    alone = window(rec, 0.1, silent_until - 0.05)
    assert level(alone, BED_HZ) > 3000 and level(alone, VOICE_HZ) < 200
    speech_at = np.flatnonzero(np.abs(rec) > 6000)[0] / RATE  # the voice tone is louder
    mixed = window(rec, speech_at + 0.05, speech_at + 0.5)
    assert level(mixed, VOICE_HZ) > 6000 and level(mixed, BED_HZ) > 3000
    after = window(rec, speech_at + 0.7, len(rec) / RATE)
    assert level(after, BED_HZ) > 3000 and level(after, VOICE_HZ) < 200
    assert p.stats.mixed_frames == 30 and p.stats.background_frames > 20
    await lb.close()


async def test_a_clear_cuts_the_speech_but_not_the_background():
    lb = Loopback(max_ahead_ms=200, local_buffer_ms=5000)
    p = lb.playout
    p.set_background(bed())
    await p.start_segment("long")
    await p.write(tone(VOICE_HZ, 3.0, 16000), 16000)
    await asyncio.sleep(0.8)
    heard = await p.clear()
    assert 500 <= heard <= 1000 and p.played_ms("long") == heard
    cleared_at = lb.far.played_ms / 1000
    await asyncio.sleep(0.6)
    rec = lb.far.recording()
    tail = window(rec, cleared_at + 0.1, len(rec) / RATE)
    assert level(tail, BED_HZ) > 3000 and level(tail, VOICE_HZ) < 200
    assert "long" not in p.stats.acked_order
    # Stopped: silence from then on.
    p.set_background(None)
    await asyncio.sleep(0.3)
    stopped_at = lb.far.played_ms / 1000
    await asyncio.sleep(0.4)
    rec = lb.far.recording()
    assert not np.any(window(rec, stopped_at + 0.1, len(rec) / RATE))
    await lb.close()


async def test_mulaw_pass_through_is_mixed_when_a_background_plays():
    lb = Loopback(max_ahead_ms=200, local_buffer_ms=5000)
    p = lb.playout
    fmt = AudioFormat(8000, "mulaw")
    assert p.carries(fmt)
    p.set_background(bed())
    await p.start_segment("enc")
    await p.write_encoded(ulaw_encode(tone(VOICE_HZ, 0.5, 8000)), fmt)
    await p.end_segment()
    await asyncio.wait_for(p.wait_played("enc"), 5)
    assert p.played_ms("enc") == 500.0 and p.stats.mixed_frames == 25
    rec = lb.far.recording()
    speech_at = np.flatnonzero(np.abs(rec) > 6000)[0] / RATE
    mixed = window(rec, speech_at + 0.05, speech_at + 0.4)
    assert level(mixed, VOICE_HZ) > 6000 and level(mixed, BED_HZ) > 3000
    await lb.close()


async def test_a_one_shot_background_ends_by_itself_on_an_l16_stream():
    lb = Loopback(max_ahead_ms=200, codec=StreamCodec(L16, 16000))
    p = lb.playout
    p.set_background(Background(tone(BED_HZ, 0.3, 8000), 8000, volume=1.0, loop=False))
    await asyncio.sleep(0.8)
    assert not p.background_active
    assert 14 <= p.stats.background_frames <= 16  # 300 ms of 20 ms frames
    await lb.close()


def test_background_specs_name_a_builtin_or_carry_a_wav() -> None:
    for name in ("hold_music", "office", "hum"):
        b = background(name, 0.3)
        assert b.sample_rate == 16000 and len(b.clip) >= 16000 and b.volume == 0.3
        assert 0 < int(np.max(np.abs(b.clip))) < 16000  # soft: the voice stays on top
    data = base64.b64encode(wav_bytes(tone(BED_HZ, 0.2, 22050), 22050)).decode()
    b = background(data, 1.0, loop=False)
    assert b.sample_rate == 22050 and not b.loop
    for bad, needle in (("jazz", "neither a built-in"),
                        (base64.b64encode(b"RIFF....nope").decode(), "WAV")):
        try:
            background(bad)
        except ValueError as exc:
            assert needle in str(exc) and str(exc).startswith("sound:")
        else:
            raise AssertionError(f"{bad!r} accepted")
    try:
        background("office", volume=1.5)
    except ValueError as exc:
        assert "volume" in str(exc)
    else:
        raise AssertionError("volume 1.5 accepted")


# --- end to end -----------------------------------------------------------------------------
async def test_background_reaches_the_caller_through_the_server(edge: Edge):
    async def script(info, transport, out):
        p = transport.playout
        p.set_background(bed())
        await asyncio.sleep(0.8)  # the agent is silent: background alone
        await p.start_segment("say")
        writer = asyncio.create_task(p.write(tone(VOICE_HZ, 2.0, 16000), 16000))
        await asyncio.sleep(0.8)
        out["heard"] = await p.clear()  # a barge-in
        await writer
        await p.end_segment()
        await asyncio.sleep(0.8)  # the background carries on
        await p.start_segment("after")
        await p.write(tone(VOICE_HZ, 0.4, 16000), 16000)
        await p.end_segment()
        await p.wait_played("after")
        out["after"] = p.played_ms("after")
        await transport.hangup("script_done")
        return "script_done"

    runner = ScriptRunner(script)
    edge.server.state.calls = runner
    call = edge.wire(edge.sim.call(to=AGENT_NUMBER))
    async with call:
        await call.wait_closed(within_s=15)
    r = call.result
    rec = r.heard
    assert r.play_errors == [] and len(r.clears) == 1
    assert r.checkpoints_acked == ["after"] and runner.result["after"] == 400.0
    assert level(window(rec, 0.1, 0.7), BED_HZ) > 3000
    assert level(window(rec, 0.1, 0.7), VOICE_HZ) < 200
    loud = np.flatnonzero(np.abs(rec) > 6000) / RATE
    first_voice = loud[0]
    assert level(window(rec, first_voice + 0.1, first_voice + 0.5), BED_HZ) > 3000
    # Between the clear and the last speech: background only, no voice left over.
    gap = window(rec, first_voice + runner.result["heard"] / 1000 + 0.1,
                 loud[loud > first_voice + 1.2][0] - 0.05)
    assert len(gap) > 0.4 * RATE
    assert level(gap, BED_HZ) > 3000 and level(gap, VOICE_HZ) < 300
