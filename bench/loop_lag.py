"""How long each embedded engine keeps the server's event loop from running (GIL hold time).

    python bench/loop_lag.py                      # idle, whisper, piper, llama_cpp
    python bench/loop_lag.py --only piper --seconds 10

While one engine works through its provider adapter (as a call uses it), a ticker coroutine
sleeps 5 ms at a time and records how late each wake-up is. An engine that holds the GIL (or
blocks the loop) shows up as late wake-ups: every call's audio, VAD and timers on this process
wait that long. Reported per engine: wake-ups, median / p99 / max lateness in ms, and the
share of wake-ups later than 10 ms. "idle" is the ticker alone (the machine's own noise).

- whisper: a 4 s utterance pushed as fast as the stream takes it, repeatedly (the worst
  case: a backlog after a stall); then the same audio paced in real time (a live call).
- piper: sentences synthesized back to back.
- llama_cpp: answers generated back to back (in-process thread before issue 12, a worker
  process after it: run this script against both to compare).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.audio.resample import StreamResampler
from providers.base import ProviderContext, SecretRef

TICK_S = 0.005
SENTENCES = [
    "Hello! Thanks for calling the clinic, how can I help you today?",
    "We are open from nine in the morning until five in the evening, Monday to Friday.",
]
QUESTION = "what are your opening hours and can I book an appointment for tomorrow morning"


async def _no_secret(ref: SecretRef) -> str:
    raise RuntimeError("local engines need no secrets")


def make_ctx(models_dir: str) -> ProviderContext:
    return ProviderContext(resolve_secret=_no_secret, models_dir=models_dir, shared={})


async def measure(work: Callable[[], Awaitable[None]], seconds: float) -> dict[str, Any]:
    """Run `work` repeatedly for `seconds` while ticking; lateness of each tick in ms."""
    late: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(TICK_S)
            late.append((time.perf_counter() - t0 - TICK_S) * 1000)

    tick = asyncio.create_task(ticker())
    end = time.perf_counter() + seconds
    runs = 0
    while time.perf_counter() < end:
        await work()
        runs += 1
    done.set()
    await tick
    late.sort()
    return {"runs": runs, "ticks": len(late), "median_ms": round(statistics.median(late), 2),
            "p99_ms": round(late[int(len(late) * 0.99) - 1], 2), "max_ms": round(late[-1], 2),
            "over_10ms_pct": round(100 * sum(x > 10 for x in late) / len(late), 2)}


async def speech_16k(ctx: ProviderContext) -> np.ndarray:
    from providers.tts.piper import PiperTTS, PiperTTSConfig

    tts = PiperTTS(PiperTTSConfig.model_validate({"noise_scale": 0.0, "noise_w_scale": 0.0}), ctx)
    resampler = StreamResampler(22050, 16000)
    parts = [resampler.process(c.samples) async for c in tts.synthesize(QUESTION)]
    pad = np.zeros(3200, dtype=np.int16)
    return np.concatenate([pad, *parts, pad])


async def bench(engine: str, models_dir: str, seconds: float) -> dict[str, Any]:
    ctx = make_ctx(models_dir)
    if engine == "idle":
        async def idle() -> None:
            await asyncio.sleep(0.1)
        return {"engine": "idle", **await measure(idle, seconds)}
    if engine.startswith("whisper"):
        from providers.stt.whisper import WhisperConfig, WhisperSTT

        audio = await speech_16k(make_ctx(models_dir))
        frames = [audio[i:i + 320] for i in range(0, len(audio) - 319, 320)]
        stt = WhisperSTT(WhisperConfig.model_validate({}), ctx)
        await stt.warm()
        paced = engine.endswith("paced")

        async def utterance() -> None:
            stream = await stt.open(16000, "en-US")
            events = stream.events()
            start = time.perf_counter()
            for i, f in enumerate(frames):
                if paced:
                    await asyncio.sleep(max(0.0, start + i * 0.02 - time.perf_counter()))
                await stream.push(f)
            await stream.flush()
            await anext(e async for e in events if e.is_final)
            await stream.aclose()
        return {"engine": engine, **await measure(utterance, seconds)}
    if engine == "piper":
        from providers.tts.piper import PiperTTS, PiperTTSConfig

        tts = PiperTTS(PiperTTSConfig.model_validate({}), ctx)
        await tts.warm()

        async def speak() -> None:
            for text in SENTENCES:
                async for _ in tts.synthesize(text):
                    pass
        return {"engine": engine, **await measure(speak, seconds)}
    from providers.llm.llama_cpp import LlamaCppConfig, LlamaCppLLM

    llm = LlamaCppLLM(LlamaCppConfig.model_validate({"max_concurrent": 1, "max_tokens": 60}), ctx)
    await llm.warm()
    question = [{"role": "system", "content": "You are a friendly receptionist."},
                {"role": "user", "content": "Tell me about the clinic."}]

    async def answer() -> None:
        async for _ in llm.stream(question):
            pass
    return {"engine": engine, **await measure(answer, seconds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0, help="per engine")
    ap.add_argument("--models-dir", default=os.environ.get(
        "PHONEBOOTH_MODELS_DIR", str(Path("~/.cache/phonebooth/models").expanduser())))
    ap.add_argument("--only", action="append", choices=[
        "idle", "whisper", "whisper_paced", "piper", "llama_cpp"])
    args = ap.parse_args()
    engines = args.only or ["idle", "whisper", "whisper_paced", "piper", "llama_cpp"]
    for engine in engines:
        print(json.dumps(asyncio.run(bench(engine, args.models_dir, args.seconds))), flush=True)


if __name__ == "__main__":
    main()
