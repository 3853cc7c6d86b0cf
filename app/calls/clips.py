"""Pre-synthesised lines for when the TTS itself is down.

When every TTS option fails mid-call the agent cannot say anything any more, not even that it
is giving up. So the line it would need then (`failure_goodbye`) is rendered ahead of time, in the
background, by the agent's own TTS chain while that still works, and kept in memory for the
process: one synthesis per (TTS chain, voice, text) serves every later call of the agent, so the
cost is a few dozen characters per agent per process, not per call (billed to the call that
renders it, like any of its usage). Agents whose TTS is all embedded skip it. A failed or
abandoned render leaves no entry, and the next call tries again.

Clips are mono int16 at 16 kHz (the engine's rate), capped in length; the cache is an LRU.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import OrderedDict
from typing import Any

import numpy as np

from pipelines.audio.frames import SAMPLE_RATE
from pipelines.audio.g711 import ulaw_decode
from pipelines.audio.resample import resample
from providers.http import CloudConfig

log = logging.getLogger(__name__)

Clip = tuple[np.ndarray, int]

MAX_CLIPS = 64
MAX_CLIP_S = 15.0


def worth_prerendering(tts: Any) -> bool:
    """Only a TTS chain with a network vendor in it can die in the middle of a call (an embedded
    one fails from the first word if at all); only then is the clip worth its request."""
    providers = getattr(tts, "providers", None) or [tts]
    return any(isinstance(getattr(p, "config", None), CloudConfig) for p in providers)


def clip_key(tts_block: Any, voice: str | None, text: str) -> str:
    """Identity of a clip: the whole TTS block (vendor, voice options, fallbacks), the voice and
    the text. Credentials appear only as references, so hashing them is harmless."""
    block = tts_block.model_dump(mode="json") if hasattr(tts_block, "model_dump") else tts_block
    raw = json.dumps([block, voice, text], sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()


class ClipCache:
    def __init__(self, max_clips: int = MAX_CLIPS) -> None:
        self.max_clips = max_clips
        self._clips: OrderedDict[str, Clip] = OrderedDict()
        self._pending: dict[str, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        return len(self._clips)

    def get(self, key: str) -> Clip | None:
        clip = self._clips.get(key)
        if clip is not None:
            self._clips.move_to_end(key)
        return clip

    def ensure(self, key: str, tts: Any, text: str, voice: str | None) -> asyncio.Task[None] | None:
        """Start rendering `text` with `tts` unless the clip exists or is being rendered.
        Returns the rendering task (None when there is nothing to do)."""
        if key in self._clips or key in self._pending or not text.strip():
            return None
        task = asyncio.create_task(self._render(key, tts, text, voice), name="clip-render")
        self._pending[key] = task
        task.add_done_callback(lambda _t: self._pending.pop(key, None))
        return task

    async def _render(self, key: str, tts: Any, text: str, voice: str | None) -> None:
        parts: list[np.ndarray] = []
        total = 0
        limit = int(MAX_CLIP_S * SAMPLE_RATE)
        stream = tts.synthesize(text, voice)
        try:
            async for chunk in stream:
                samples = (ulaw_decode(chunk.samples) if chunk.encoding == "mulaw"
                           else np.asarray(chunk.samples, dtype=np.int16))
                pcm = resample(samples, int(chunk.sample_rate), SAMPLE_RATE)
                parts.append(pcm)
                total += len(pcm)
                if total >= limit:
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the TTS is already failing: nothing to keep, retry later
            log.info("could not pre-render a fallback line: %s", exc)
            return
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception as exc:
                    log.debug("closing the clip's TTS stream: %r", exc)
        if not total:
            return
        self._clips[key] = (np.concatenate(parts)[:limit], SAMPLE_RATE)
        self._clips.move_to_end(key)
        while len(self._clips) > self.max_clips:
            self._clips.popitem(last=False)

    async def aclose(self) -> None:
        tasks = list(self._pending.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
