"""Pre-rendered lines for when the TTS is down: rendered once per (TTS chain, voice, text)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np

from app.calls.clips import ClipCache, clip_key, worth_prerendering
from pipelines.audio.g711 import ulaw_encode
from providers.base import AudioChunk, ProviderError


class ToneTTS:
    def __init__(self, *, rate: int = 8000, mulaw: bool = False, fail: bool = False) -> None:
        self.rate, self.mulaw, self.fail = rate, mulaw, fail
        self.requests: list[str] = []

    async def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[AudioChunk]:
        self.requests.append(text)
        if self.fail:
            raise ProviderError("tone", "down", status=500)
        pcm = np.full(self.rate // 10, 4000, np.int16)  # 100 ms per chunk
        for _ in range(5):
            await asyncio.sleep(0)
            if self.mulaw:
                yield AudioChunk(np.frombuffer(ulaw_encode(pcm), np.uint8), self.rate, "mulaw")
            else:
                yield AudioChunk(pcm, self.rate)


async def test_rendered_once_then_served_from_memory_at_16khz() -> None:
    cache, tts = ClipCache(), ToneTTS(mulaw=True)
    key = clip_key({"provider": "elevenlabs"}, None, "Goodbye.")
    task = cache.ensure(key, tts, "Goodbye.", None)
    assert task is not None
    assert cache.ensure(key, tts, "Goodbye.", None) is None  # already rendering
    await task
    samples, rate = cache.get(key)  # type: ignore[misc]
    assert rate == 16000 and abs(len(samples) - 8000) < 64  # 0.5 s, resampled from 8 kHz
    assert abs(int(np.median(samples)) - 4000) < 200  # μ-law decoded
    assert cache.ensure(key, tts, "Goodbye.", None) is None and tts.requests == ["Goodbye."]


async def test_a_failed_render_leaves_nothing_and_is_retried() -> None:
    cache = ClipCache()
    key = clip_key({"provider": "elevenlabs"}, "v1", "Goodbye.")
    task = cache.ensure(key, ToneTTS(fail=True), "Goodbye.", "v1")
    assert task is not None
    await task
    assert cache.get(key) is None and len(cache) == 0
    again = cache.ensure(key, ToneTTS(), "Goodbye.", "v1")
    assert again is not None
    await again
    assert cache.get(key) is not None


async def test_keys_differ_by_tts_voice_and_text_and_the_cache_is_bounded() -> None:
    keys = {clip_key({"provider": p}, v, t) for p in ("a", "b") for v in (None, "x")
            for t in ("Bye.", "Goodbye.")}
    assert len(keys) == 8
    cache = ClipCache(max_clips=2)
    for i in range(3):
        task = cache.ensure(f"k{i}", ToneTTS(), "Bye.", None)
        assert task is not None
        await task
    assert len(cache) == 2 and cache.get("k0") is None


def test_only_chains_with_a_cloud_vendor_are_prerendered() -> None:
    from types import SimpleNamespace

    from providers.http import CloudConfig
    from providers.tts.piper import PiperTTS

    local = SimpleNamespace(config=PiperTTS.Config())
    cloud = SimpleNamespace(config=CloudConfig())
    assert not worth_prerendering(local)
    assert worth_prerendering(cloud)
    assert worth_prerendering(SimpleNamespace(providers=[local, cloud]))  # a fallback chain
