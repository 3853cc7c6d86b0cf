"""Soft "thinking" audio while the agent waits for the LLM (setting `thinking_audio`).

A quiet pulse (a short 440 Hz blip with a smooth envelope, then silence) loops into the playout
sink as its own segment. It only starts after `delay_s`, so quick answers never hear it, and it is
stopped and cleared from the sink right before the answer's first audio.

The sink paces it: `write` pushes back once the sink holds its budget of unplayed audio.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from functools import lru_cache

import numpy as np

from pipelines.audio.backgrounds import background
from pipelines.audio.frames import FRAME_SAMPLES, SAMPLE_RATE
from pipelines.audio.mixer import LoopingSource
from pipelines.audio.resample import resample
from pipelines.ports import PlayoutSink

log = logging.getLogger(__name__)

_ids = itertools.count(1)


@lru_cache(maxsize=1)
def thinking_clip() -> np.ndarray:
    """1.2 s: a 160 ms blip at about −26 dBFS with raised-cosine edges, then silence."""
    blip_n = int(0.16 * SAMPLE_RATE)
    t = np.arange(blip_n) / SAMPLE_RATE
    envelope = np.sin(np.pi * np.arange(blip_n) / blip_n) ** 2
    blip = 0.05 * envelope * np.sin(2 * np.pi * 440.0 * t)
    clip = np.zeros(int(1.2 * SAMPLE_RATE), dtype=np.float32)
    clip[:blip_n] = blip
    return np.rint(clip * 32767).astype(np.int16)


def custom_clip(sound: str) -> np.ndarray:
    """A thinking sound given as a built-in name or a base64 WAV, at the engine's rate."""
    bed = background(sound)
    return resample(bed.clip, bed.sample_rate, SAMPLE_RATE)


class ThinkingAudio:
    def __init__(self, sink: PlayoutSink, *, delay_s: float = 0.6,
                 clip: np.ndarray | None = None) -> None:
        self._sink = sink
        self._delay_s = delay_s
        self._clip = clip if clip is not None else thinking_clip()
        self._task: asyncio.Task[None] | None = None
        self._playing = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="thinking")

    async def stop(self) -> None:
        """Stop writing and drop what is still queued at the far end."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._playing:
            self._playing = False
            try:
                await self._sink.end_segment()
                await self._sink.clear()
            except Exception as exc:
                log.debug("clearing thinking audio: %r", exc)

    async def _run(self) -> None:
        await asyncio.sleep(self._delay_s)
        source = LoopingSource(self._clip, volume=1.0)
        await self._sink.start_segment(f"thinking-{next(_ids)}")
        self._playing = True
        while True:
            await self._sink.write(source.read(FRAME_SAMPLES), SAMPLE_RATE)
            await asyncio.sleep(0)  # yield even while the sink has room
