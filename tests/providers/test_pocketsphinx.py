"""Pocketsphinx STT on real speech (Piper-synthesised, see tests/speech.py): interim results while
audio streams, a final on flush, usage and latency reported, bounded per-stream state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

pytest.importorskip("pocketsphinx", reason="the `local` extra (pocketsphinx) is not installed")
pytest.importorskip("piper", reason="test speech is synthesised with piper-tts (`local` extra)")

from pipelines.audio.g711 import ulaw_decode, ulaw_encode
from pipelines.audio.resample import resample
from providers import registry
from providers.base import ProviderError, STTStream, Transcript
from providers.stt.pocketsphinx import PocketsphinxConfig, PocketsphinxSTT
from tests.speech import frames, synthesize, with_silence

QUESTION = "what are your opening hours"


async def run_utterance(stream: STTStream, events: AsyncIterator[Transcript], audio: np.ndarray,
                        frame_samples: int = 320) -> tuple[list[Transcript], Transcript]:
    """Push the audio in 20 ms frames, flush, and collect interims up to the final."""
    for frame in frames(audio, frame_samples):
        await stream.push(frame)
    await stream.flush()
    interims: list[Transcript] = []

    async def until_final() -> Transcript:
        async for t in events:
            if t.is_final:
                return t
            interims.append(t)
        raise AssertionError("stream ended without a final transcript")

    final = await asyncio.wait_for(until_final(), 30)
    return interims, final


async def test_transcribes_a_question_with_interims_and_a_final(ctx, recorder) -> None:
    stt = PocketsphinxSTT(PocketsphinxConfig(), ctx)
    audio = with_silence(synthesize(QUESTION), lead_ms=300, trail_ms=300)
    stream = await stt.open(16000, "en-US")
    interims, final = await run_utterance(stream, stream.events(), audio)
    await stream.aclose()

    words = final.text.split()
    assert "opening" in words and "hours" in words, final.text
    assert interims and all(not t.is_final and t.text for t in interims)
    assert any("opening" in t.text for t in interims)  # hypotheses grow while audio streams
    assert final.end_ms == pytest.approx(len(audio) * 1000 / 16000, abs=25)
    assert recorder.quantity("audio_seconds") == pytest.approx(len(audio) / 16000, abs=0.03)
    assert len(recorder.metric_values("ttfb_ms")) == 1


async def test_telephone_audio_is_resampled_and_recognised(ctx) -> None:
    """A Plivo leg is 8 kHz μ-law: feed it at 8 kHz (the stream resamples to the model's 16)."""
    stt = PocketsphinxSTT(PocketsphinxConfig(), ctx)
    narrow = with_silence(synthesize("I would like to book an appointment for tomorrow", 8000),
                          300, 300, 8000)
    phone = ulaw_decode(ulaw_encode(narrow))
    stream = await stt.open(8000, "en-US")
    _, final = await run_utterance(stream, stream.events(), phone, frame_samples=160)
    await stream.aclose()
    assert {"appointment", "tomorrow"} <= set(final.text.split()), final.text


async def test_one_stream_serves_consecutive_turns(ctx, recorder) -> None:
    stt = PocketsphinxSTT(PocketsphinxConfig(), ctx)
    stream = await stt.open(16000, "en-US")
    events = stream.events()
    _, first = await run_utterance(stream, events, with_silence(synthesize(QUESTION), 200, 200))
    _, second = await run_utterance(stream, events,
                                    with_silence(synthesize("thank you goodbye"), 200, 200))
    # A flush with no audio still answers, so a turn never waits for a final that won't come.
    await stream.flush()
    empty = await asyncio.wait_for(anext(events), 10)
    await stream.aclose()

    assert "hours" in first.text and "goodbye" in second.text, (first.text, second.text)
    assert "hours" not in second.text  # the second turn starts clean
    assert second.start_ms >= first.end_ms
    assert empty.is_final and empty.text == ""
    assert [e async for e in events] == []  # closing ends the transcript stream
    assert len([u for u in recorder.usage if u.metric == "audio_seconds"]) == 2


async def test_unflushed_speech_is_finalised_at_the_utterance_cap(ctx) -> None:
    stt = PocketsphinxSTT(PocketsphinxConfig(max_utterance_s=2.0, interim_interval_ms=0), ctx)
    stream = await stt.open(16000, "en-US")
    events = stream.events()
    speech = with_silence(synthesize(QUESTION), 0, 1000)  # ~2.6 s, never flushed
    for frame in frames(speech):
        await stream.push(frame)
    first = await asyncio.wait_for(anext(events), 30)
    await stream.aclose()
    assert first.is_final and first.end_ms - first.start_ms == 2000


async def test_decoders_are_reused_across_streams(ctx, shared) -> None:
    stt = PocketsphinxSTT(PocketsphinxConfig(), ctx)
    a = await stt.open(16000, "en-US")
    await a.aclose()
    (pool,) = shared["pocketsphinx"].values()
    idle = len(pool._idle)
    assert idle >= 1
    b = await stt.open(16000, "en-US")
    assert len(pool._idle) == idle - 1  # taken from the pool, not created
    await b.aclose()


def test_only_us_english_without_custom_models() -> None:
    assert registry.parse_config("stt", "pocketsphinx", {"language": "en-US"})
    with pytest.raises(registry.ValidationError, match="only an en-US model"):
        registry.parse_config("stt", "pocketsphinx", {"language": "de-DE"})
    custom = registry.parse_config("stt", "pocketsphinx",
                                   {"language": "fr-FR", "hmm": "fr/hmm", "lm": "fr.lm.bin",
                                    "dict": "fr.dict"})
    assert PocketsphinxSTT.model_files(custom) == ["fr/hmm/mdef", "fr.lm.bin", "fr.dict"]


async def test_agent_language_is_checked_at_open(ctx) -> None:
    stt = PocketsphinxSTT(PocketsphinxConfig(), ctx)
    with pytest.raises(ProviderError, match="only en-US"):
        await stt.open(16000, "es-ES")


async def test_missing_custom_model_is_a_provider_error(ctx) -> None:
    stt = PocketsphinxSTT(PocketsphinxConfig(hmm="/nonexistent/hmm"), ctx)
    with pytest.raises(ProviderError, match="could not create the decoder"):
        await stt.open(16000, "en-US")


async def test_turn_survives_a_failing_primary_through_fallback(ctx) -> None:
    """A cloud STT dies mid-sentence; the fallback chain replays the utterance into pocketsphinx
    and the turn is transcribed whole."""
    from providers.fallback import Cooldowns, FallbackSTT

    class DyingStream(STTStream):
        def __init__(self) -> None:
            self.n = 0
            self.closed = asyncio.Event()

        async def push(self, frame: np.ndarray) -> None:
            self.n += 1
            if self.n == 60:  # 1.2 s into the utterance
                raise ProviderError("cloud", "connection lost")

        async def flush(self) -> None:
            pass

        async def events(self) -> AsyncIterator[Transcript]:
            await self.closed.wait()
            return
            yield  # an async generator that ends when the stream is closed

        async def aclose(self) -> None:
            self.closed.set()

    class DyingSTT:
        name = "cloud"

        async def open(self, sample_rate: int, language: str) -> STTStream:
            return DyingStream()

    switches: list[tuple[str, str, str]] = []
    stt = FallbackSTT([(DyingSTT(), 5.0), (PocketsphinxSTT(PocketsphinxConfig(), ctx), 10.0)],
                      on_switch=lambda k, f, t, e: switches.append((k, f, t)),
                      cooldowns=Cooldowns())
    stream = await stt.open(16000, "en-US")
    _, final = await run_utterance(stream, stream.events(),
                                   with_silence(synthesize(QUESTION), 300, 300))
    await stream.aclose()
    assert switches == [("stt", "cloud", "pocketsphinx")]
    assert {"what", "opening", "hours"} <= set(final.text.split()), final.text


async def test_the_first_words_of_a_phone_call_are_recognised(ctx) -> None:
    """The engine hands the STT 16 kHz audio, but a call's content is narrowband μ-law: the
    bundled model starts each stream normalised for that channel, so even the caller's first
    question comes out right (with the model's wideband start it was "... opening are")."""
    stt = PocketsphinxSTT(PocketsphinxConfig(), ctx)
    narrow = with_silence(synthesize("What are your opening hours?", 8000), 1000, 300, 8000)
    phone = resample(ulaw_decode(ulaw_encode(narrow)), 8000, 16000)
    stream = await stt.open(16000, "en-US")
    _, final = await run_utterance(stream, stream.events(), phone)
    await stream.aclose()
    assert final.text == "what are your opening hours", final.text


def test_phone_audio_is_told_from_wideband_audio() -> None:
    from providers.stt.phone_band import BandProbe

    def verdict(audio: np.ndarray) -> bool | None:
        probe = BandProbe(16000)
        for frame in frames(audio):
            v = probe.feed(frame)
            if v is not None:
                return v
        return None

    text = "Is there parking nearby?"
    narrow = resample(ulaw_decode(ulaw_encode(synthesize(text, 8000))), 8000, 16000)
    assert verdict(with_silence(narrow, 500, 0)) is True
    assert verdict(with_silence(synthesize(text), 500, 0)) is False
    assert verdict(np.zeros(16000, dtype=np.int16)) is None  # silence says nothing
