"""Caller audio between the Plivo socket and the engine: one queue, one drop counter."""

from __future__ import annotations

import numpy as np

from app.telephony.plivo.codec import DEFAULT_CODEC, L16, FrameDecoder, StreamCodec
from app.telephony.plivo.playout import PlivoPlayout
from app.telephony.plivo.transport import PlivoTransport
from pipelines.audio.g711 import ulaw_decode
from pipelines.audio.inbox import INBOX_MAX_FRAMES, AudioFormat
from pipelines.engine.caller_audio import ConsumerFormats


async def _noop(*_: object) -> None:
    return None


def transport() -> PlivoTransport:
    playout = PlivoPlayout(_noop, DEFAULT_CODEC, "stream-1")
    return PlivoTransport(session_id="s1", call_uuid="c1", stream_id="stream-1",
                          codec=DEFAULT_CODEC, playout=playout, rest=None,
                          transfers=None, close_stream=_noop)


async def test_overload_drops_the_oldest_frames_once_on_one_counter() -> None:
    t = transport()
    payloads = [bytes([i % 256]) * 160 for i in range(INBOX_MAX_FRAMES + 100)]
    for p in payloads:  # 5 s of caller audio while the engine reads nothing
        t.push_media(p)
    assert (t.inbox.frames_in, t.inbox.dropped, len(t.inbox)) == (
        INBOX_MAX_FRAMES + 100, 100, INBOX_MAX_FRAMES)
    t.finish("stream_stopped")
    kept = [f async for f in t.inbox]
    # The newest audio survives, as the carrier's bytes at the carrier's rate.
    assert [f.mulaw for f in kept] == payloads[100:]
    assert all(f.rate == 8000 and len(f.pcm) == 160 for f in kept)
    assert np.array_equal(kept[0].pcm, ulaw_decode(payloads[100]))


def test_media_is_cut_into_20ms_frames_whatever_the_payload_size() -> None:
    dec = FrameDecoder(DEFAULT_CODEC)
    data = bytes(range(256)) * 3  # 768 bytes: four 160-byte frames and 128 carried over
    frames = dec.push(data[:100]) + dec.push(data[100:])
    assert [f.mulaw for f in frames] == [data[i:i + 160] for i in range(0, 640, 160)]
    l16 = FrameDecoder(StreamCodec(L16, 16000))
    (f,) = l16.push(np.arange(320, dtype="<i2").tobytes())
    assert f.rate == 16000 and f.mulaw is None and f.pcm.tolist() == list(range(320))


def test_each_consumer_gets_its_own_format() -> None:
    dec = FrameDecoder(DEFAULT_CODEC)
    frames = dec.push(bytes(range(256)) * 5)
    mulaw_stt = ConsumerFormats(AudioFormat(8000, "mulaw"))
    pcm_stt = ConsumerFormats(AudioFormat(16000, "pcm16"))
    vad = [v for f in frames for v in mulaw_stt.for_vad(f)]
    assert vad and all(len(v) == 320 and v.dtype == np.int16 for v in vad)
    assert b"".join(mulaw_stt.for_stt(f).tobytes() for f in frames) == \
        b"".join(f.mulaw or b"" for f in frames)
    up = [pcm_stt.for_stt(f) for f in frames]
    assert all(u.dtype == np.int16 for u in up) and sum(map(len, up)) > 0
