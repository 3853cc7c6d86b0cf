"""SpeechOutput: segments, hold/resume through the gate, cut and resume from the heard
position, heard-text accounting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from pipelines.audio.g711 import ulaw_decode, ulaw_encode
from pipelines.audio.inbox import AudioFormat
from pipelines.speech_output import (
    RESUME_FADE_MS,
    RESUME_REWIND_MS,
    SpeechError,
    SpeechOutput,
    text_prefix,
)
from providers.base import AudioChunk
from tests.pipelines.fakes import FakePlayoutSink, FakeTTS
from tests.pipelines.virtual_clock import run_virtual


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [(1.0, "We open at nine today."), (0.0, ""), (0.5, "We open at"), (0.52, "We open at"),
     (0.2, "We"), (0.05, ""), (0.999, "We open at nine today.")],
)
def test_text_prefix_cuts_back_to_whole_words(fraction: float, expected: str) -> None:
    assert text_prefix("We open at nine today.", fraction) == expected


def make(sink: FakePlayoutSink, tts: FakeTTS, gate: asyncio.Event) -> SpeechOutput:
    ids = iter(range(1, 100))
    return SpeechOutput(sink, tts, gate=gate, next_segment_id=lambda: f"s{next(ids)}",
                        max_sentences=0)


def test_sentences_become_segments_and_prefetch_hides_tts_latency() -> None:
    async def scenario() -> None:
        sink, tts, gate = FakePlayoutSink(), FakeTTS(ttfb_ms=150), asyncio.Event()
        gate.set()
        out = make(sink, tts, gate)
        run = asyncio.create_task(out.run())
        await out.add_text("First sentence here.")
        await out.add_text("Second one.")
        await out.close()
        await run
        assert sink.segments == ["s1", "s2"]
        assert all(sink.fully_played(s) for s in sink.segments)
        assert out.heard_text() == "First sentence here. Second one."
        # The second sentence was synthesised while the first played: no gap between them.
        s2_first = min(t for t, seg in sink.play_log if seg == "s2")
        s1_last = max(t for t, seg in sink.play_log if seg == "s1")
        assert s2_first - s1_last <= 0.02 + 1e-9
        await sink.aclose()

    run_virtual(scenario())


def test_closed_gate_holds_and_reopening_resumes_where_it_stopped() -> None:
    async def scenario() -> None:
        sink, tts, gate = FakePlayoutSink(), FakeTTS(), asyncio.Event()
        gate.set()
        out = make(sink, tts, gate)
        run = asyncio.create_task(out.run())
        text = "A sentence that lasts a couple of seconds."
        await out.add_text(text)
        await out.close()
        await asyncio.sleep(1.0)
        gate.clear()
        await asyncio.sleep(1.0)
        held = sink.played["s1"]
        # Only what was already queued (≤ max_ahead_ms) played during the hold.
        assert sink.written["s1"] - held < 1
        assert 1000 <= held <= 1000 + sink.max_ahead_ms + 20
        gate.set()
        await run
        assert sink.fully_played("s1")
        assert sink.written["s1"] == pytest.approx(tts.duration_ms(text))
        await sink.aclose()

    run_virtual(scenario())


def test_heard_text_after_a_clear_is_the_played_share() -> None:
    async def scenario() -> None:
        sink, tts, gate = FakePlayoutSink(), FakeTTS(), asyncio.Event()
        gate.set()
        out = make(sink, tts, gate)
        run = asyncio.create_task(out.run())
        await out.add_text("One two three four five six seven eight.")  # 2 s
        await out.add_text("Never played at all.")
        await out.close()
        await asyncio.sleep(1.0)
        out.freeze()
        await sink.clear()
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        fraction = sink.played["s1"] / tts.duration_ms("One two three four five six seven eight.")
        assert 0.45 < fraction < 0.6
        assert out.heard_text() == "One two three four"
        # Counting audio handed to the sink (≤ max_ahead_ms more) as heard gives at least as much.
        written = out.heard_text(assume_written_plays=True)
        assert written.startswith("One two three four") and len(written) >= len(out.heard_text())
        assert out.text() == "One two three four five six seven eight. Never played at all."
        assert out.current_segment_id() == "s1"
        await sink.aclose()

    run_virtual(scenario())


def test_tts_failure_surfaces_as_speech_error_and_audio_clips_play() -> None:
    async def scenario() -> None:
        sink, gate = FakePlayoutSink(), asyncio.Event()
        gate.set()
        out = make(sink, FakeTTS(fail_on="boom"), gate)
        run = asyncio.create_task(out.run())
        await out.add_audio(np.zeros(4000, dtype=np.int16), 8000, text="clip")
        await out.add_text("boom goes the tts.")
        await out.close()
        with pytest.raises(SpeechError) as err:
            await run
        assert err.value.stage == "tts"
        assert sink.written["s1"] == pytest.approx(500)
        await sink.aclose()

    run_virtual(scenario())


def test_cut_clears_at_once_and_resume_continues_from_the_heard_position() -> None:
    async def scenario() -> None:
        sink, tts, gate = FakePlayoutSink(), FakeTTS(), asyncio.Event()
        gate.set()
        out = make(sink, tts, gate)
        run = asyncio.create_task(out.run())
        text = "A sentence that lasts a couple of seconds."  # 2.1 s
        await out.add_text(text)
        await out.add_text("And one more.")
        await out.close()
        await asyncio.sleep(1.0)
        gate.clear()
        await out.cut()
        assert len(sink.clears) == 1 and out.held
        heard = sink.played["s1"]
        assert 800 <= heard <= 1000 and sink.written["s1"] - heard >= 100  # some was cut away
        await asyncio.sleep(0.5)
        assert sink.played["s1"] == heard  # silent while held, not only once the queue drained
        # Cut short, the segment counts as heard up to the cut.
        assert out.heard_text() == text_prefix(text, heard / tts.duration_ms(text))
        await out.resume()
        gate.set()
        await run
        assert sink.segments == ["s1", "s1~1", "s2"] and sink.dropped_ms == 0
        tone = tts.audio(text)
        start = int((heard - RESUME_REWIND_MS) * 16)
        fade = int(RESUME_FADE_MS * 16)
        again = sink.samples("s1~1")
        np.testing.assert_array_equal(again[fade:], tone[start + fade:])
        assert sink.fully_played("s1~1") and sink.fully_played("s2")
        assert out.heard_text() == "A sentence that lasts a couple of seconds. And one more."
        assert [s.played for s in out.segments] == [True, True]
        await sink.aclose()

    run_virtual(scenario())


def test_a_cut_after_everything_was_written_holds_the_end_until_the_resume() -> None:
    async def scenario() -> None:
        sink, tts, gate = FakePlayoutSink(ack_delay_ms=100), FakeTTS(), asyncio.Event()
        gate.set()
        out = make(sink, tts, gate)
        played: list[str] = []
        out._on_played = lambda seg: played.append(seg.id)
        run = asyncio.create_task(out.run())
        await out.add_text("Short one.")  # 500 ms
        await out.close()
        await asyncio.sleep(0.4)  # all written, the last ~100 ms still queued
        gate.clear()
        await out.cut()
        await asyncio.sleep(1.0)
        # The clear released the sink's ack wait, but the sentence was not heard in full.
        assert not run.done() and played == []
        await out.resume()
        gate.set()
        await run
        assert played == ["s1"] and sink.fully_played("s1~1")
        assert out.heard_text() == "Short one."
        await sink.aclose()

    run_virtual(scenario())


def test_stopping_after_a_cut_does_not_clear_again_and_keeps_the_heard_share() -> None:
    async def scenario() -> None:
        sink, tts, gate = FakePlayoutSink(), FakeTTS(), asyncio.Event()
        gate.set()
        out = make(sink, tts, gate)
        run = asyncio.create_task(out.run())
        text = "One two three four five six seven eight."
        await out.add_text(text)
        await out.close()
        await asyncio.sleep(1.0)
        gate.clear()
        await out.cut()
        heard = sink.played["s1"]
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await out.stop_audio()
        assert len(sink.clears) == 1
        assert out.heard_text() == text_prefix(text, heard / tts.duration_ms(text))
        assert out.heard_text() == "One two three four"
        await sink.aclose()

    run_virtual(scenario())


class MulawTTS(FakeTTS):
    """The fake's tone as μ-law 8 kHz bytes, like a vendor asked for the carrier's codec."""

    async def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[AudioChunk]:
        async for chunk in super().synthesize(text, voice):
            pcm8k = chunk.samples[::2]
            codes = np.frombuffer(ulaw_encode(pcm8k), dtype=np.uint8)
            yield AudioChunk(codes, 8000, "mulaw")


class MulawSink(FakePlayoutSink):
    """A sink on a μ-law leg: μ-law bytes go out as they are (counted), PCM is written."""

    def __init__(self) -> None:
        super().__init__()
        self.encoded_writes: list[float] = []  # times of the pass-through writes
        self.pcm_writes: list[float] = []

    def carries(self, fmt: AudioFormat) -> bool:
        return fmt == AudioFormat(8000, "mulaw")

    async def write_encoded(self, payload: bytes, fmt: AudioFormat) -> None:
        self.encoded_writes.append(asyncio.get_running_loop().time())
        await super().write(ulaw_decode(payload), fmt.sample_rate)

    async def write(self, samples: np.ndarray, sample_rate: int) -> None:
        self.pcm_writes.append(asyncio.get_running_loop().time())
        await super().write(samples, sample_rate)


def test_ducking_lowers_what_the_far_end_holds_at_once_and_passes_mulaw_through_after() -> None:
    async def scenario() -> None:
        sink, tts, gate = MulawSink(), MulawTTS(), asyncio.Event()
        gate.set()
        out = make(sink, tts, gate)
        run = asyncio.create_task(out.run())
        text = "A sentence that lasts a couple of seconds."  # 2.1 s
        await out.add_text(text)
        await out.close()
        await asyncio.sleep(0.6)
        loop = asyncio.get_running_loop()
        gate.clear()
        await out.duck(0.25)
        gate.set()
        ducked_at = loop.time()
        assert len(sink.clears) == 1 and not out.held
        await asyncio.sleep(0.5)
        out.unduck()
        unducked_at = loop.time()
        await run
        # Pass-through before the duck and after it; ducked audio has to be PCM (the samples
        # were scaled), written from the duck until the unduck.
        assert any(t < ducked_at for t in sink.encoded_writes)
        assert any(t > unducked_at for t in sink.encoded_writes)
        assert not [t for t in sink.encoded_writes if ducked_at <= t < unducked_at]
        assert not [t for t in sink.pcm_writes if t > unducked_at]
        again = sink.samples("s1~1")
        full = int(np.abs(sink.samples("s1")).max())
        ducked_part = again[: int(0.4 * 8000)]
        assert 0 < np.abs(ducked_part).max() <= full * 0.25 + 1
        assert np.abs(again[-4000:]).max() > full * 0.9  # full volume again at the end
        assert sink.fully_played("s1~1") and out.heard_text() == text
        await sink.aclose()

    run_virtual(scenario())
