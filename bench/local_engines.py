"""Speed of the embedded offline engines, measured through their provider adapters.

    /work/venv/bin/python bench/local_engines.py              # all three, 5 runs each
    /work/venv/bin/python bench/local_engines.py --only piper --runs 10 --json

- pocketsphinx: real-time factor (decode time / audio time) with audio pushed as fast as the
  stream takes it, and the flush→final latency when the same audio arrives paced in real time
  (what the end of a user's turn waits for).
- piper: real-time factor per sentence and first-chunk latency (request → first audio).
- llama.cpp: time to first token for a fresh prompt and for a follow-up turn that reuses the
  cached prefix, and decode speed in tokens per second.

RTF is reported both as wall time and as process CPU time (all threads) per audio second; the
CPU figure is what bounds calls per core. Medians over `--runs`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.audio.resample import StreamResampler
from providers.base import ProviderContext, SecretRef, TextDelta, Usage

SENTENCES = [
    "Hello! Thanks for calling the clinic, how can I help you today?",
    "We are open from nine in the morning until five in the evening, Monday to Friday.",
    "I can book you in for a cleaning next Tuesday at ten thirty.",
]
QUESTION = "what are your opening hours and can I book an appointment for tomorrow morning"
SYSTEM = ("You are a friendly receptionist at a dental clinic. The clinic is open from 9am to "
          "5pm, Monday to Friday. Answer in one or two short sentences.")


async def _no_secret(ref: SecretRef) -> str:
    raise RuntimeError("local engines need no secrets")


def make_ctx(models_dir: str) -> ProviderContext:
    return ProviderContext(resolve_secret=_no_secret, models_dir=models_dir, shared={})


class Timer:
    def __enter__(self) -> Timer:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def bench_piper(ctx: ProviderContext, runs: int, threads: int) -> dict[str, Any]:
    from providers.tts.piper import PiperTTS, PiperTTSConfig

    tts = PiperTTS(PiperTTSConfig(threads=threads), ctx)
    with Timer() as load:
        await tts.warm()
    rtf_wall, rtf_cpu = [], []
    # Piper renders a sentence in one run, so the first chunk waits for the whole first
    # sentence: report it per text, with that sentence's audio length.
    first: dict[str, list[float]] = {}
    first_s: dict[str, list[float]] = {}
    for _ in range(runs):
        for text in SENTENCES:
            samples = 0
            with Timer() as t:
                t0 = time.perf_counter()
                async for chunk in tts.synthesize(text):
                    if samples == 0:
                        first.setdefault(text, []).append((time.perf_counter() - t0) * 1000)
                        first_s.setdefault(text, []).append(len(chunk.samples) / tts.sample_rate)
                    samples += len(chunk.samples)
            seconds = samples / tts.sample_rate
            rtf_wall.append(t.wall / seconds)
            rtf_cpu.append(t.cpu / seconds)
    return {"engine": "piper", "voice": tts.model_name, "threads": threads,
            "load_s": round(load.wall, 3), "rtf_wall": round(med(rtf_wall), 4),
            "rtf_cpu": round(med(rtf_cpu), 4),
            "first_chunk_ms": {f"{k[:24]}... ({med(first_s[k]):.1f} s)": round(med(v), 1)
                               for k, v in first.items()}}


async def _speech_16k(ctx: ProviderContext, text: str) -> np.ndarray:
    from providers.tts.piper import PiperTTS, PiperTTSConfig

    tts = PiperTTS(PiperTTSConfig(noise_scale=0.0, noise_w_scale=0.0), ctx)
    resampler = StreamResampler(22050, 16000)
    parts = [resampler.process(c.samples) async for c in tts.synthesize(text)]
    pad = np.zeros(3200, dtype=np.int16)
    return np.concatenate([pad, *parts, pad])


async def bench_pocketsphinx(ctx: ProviderContext, runs: int) -> dict[str, Any]:
    from providers.stt.pocketsphinx import PocketsphinxConfig, PocketsphinxSTT

    audio = await _speech_16k(make_ctx(ctx.models_dir), QUESTION)  # own ctx: no shared voice
    seconds = len(audio) / 16000
    frames = [audio[i:i + 320] for i in range(0, len(audio) - 319, 320)]
    stt = PocketsphinxSTT(PocketsphinxConfig(), ctx)
    with Timer() as load:
        first_stream = await stt.open(16000, "en-US")
    await first_stream.aclose()

    async def utterance(paced: bool) -> tuple[float, float, float, str]:
        stream = await stt.open(16000, "en-US")
        events = stream.events()
        with Timer() as t:
            start = time.perf_counter()
            for i, f in enumerate(frames):
                if paced:  # 20 ms frames on the wall clock, like a live call
                    await asyncio.sleep(max(0.0, start + i * 0.02 - time.perf_counter()))
                await stream.push(f)
            flushed = time.perf_counter()
            await stream.flush()
            final = await anext(e async for e in events if e.is_final)
        await stream.aclose()
        return t.wall, t.cpu, (time.perf_counter() - flushed) * 1000, final.text

    rtf_wall, rtf_cpu, paced_final, text = [], [], [], ""
    for _ in range(runs):
        wall, cpu, _, text = await utterance(paced=False)
        rtf_wall.append(wall / seconds)
        rtf_cpu.append(cpu / seconds)
    for _ in range(max(1, runs // 2)):
        _, _, latency, _ = await utterance(paced=True)
        paced_final.append(latency)
    return {"engine": "pocketsphinx", "audio_s": round(seconds, 2),
            "decoder_create_s": round(load.wall, 3), "rtf_wall": round(med(rtf_wall), 4),
            "rtf_cpu": round(med(rtf_cpu), 4),
            "final_after_flush_ms_paced": round(med(paced_final), 1), "transcript": text}


async def bench_llama(ctx: ProviderContext, runs: int, threads: int) -> dict[str, Any]:
    from providers.llm.llama_cpp import LlamaCppConfig, LlamaCppLLM

    llm = LlamaCppLLM(LlamaCppConfig(n_threads=threads, max_tokens=64, temperature=0.0,
                                     max_concurrent=1), ctx)
    with Timer() as load:
        await llm.warm()

    async def turn(messages: list[dict[str, str]]) -> tuple[float, float, int, int, str]:
        t0 = time.perf_counter()
        first = last = 0.0
        out, usage = "", {}
        async for e in llm.stream(messages):
            if isinstance(e, TextDelta):
                now = time.perf_counter()
                first = first or now
                last = now
                out += e.text
            elif isinstance(e, Usage):
                usage[e.metric] = int(e.quantity)
        n = usage.get("output_tokens", 0)
        tps = (n - 1) / (last - first) if n > 1 and last > first else float("nan")
        return (first - t0) * 1000, tps, usage.get("input_tokens", 0), n, out

    cold, warm, tps, prompt_tokens, reply = [], [], [], 0, ""
    for i in range(runs):
        # A fresh system prompt each run defeats the prefix cache: the first turn of a call.
        system = f"{SYSTEM} (Call {i}.)"
        first_turn = [{"role": "system", "content": system},
                      {"role": "user", "content": "What are your opening hours?"}]
        ttft, rate, prompt_tokens, _, reply = await turn(first_turn)
        cold.append(ttft)
        tps.append(rate)
        # The next turn of the same call: history is a cached prefix, only the new turn is new.
        follow = [*first_turn, {"role": "assistant", "content": reply},
                  {"role": "user", "content": "Can I come on Saturday?"}]
        ttft, rate, _, _, _ = await turn(follow)
        warm.append(ttft)
        tps.append(rate)
    return {"engine": "llama_cpp", "model": llm.model_name, "threads": threads,
            "load_s": round(load.wall, 3), "prompt_tokens": prompt_tokens,
            "ttft_ms_first_turn": round(med(cold), 1), "ttft_ms_next_turn": round(med(warm), 1),
            "tokens_per_s": round(med([x for x in tps if x == x]), 1), "sample_reply": reply}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="piper / llama.cpp threads")
    ap.add_argument("--models-dir", default=os.environ.get(
        "PHONEBOOTH_MODELS_DIR", str(Path("~/.cache/phonebooth/models").expanduser())))
    ap.add_argument("--only", choices=["pocketsphinx", "piper", "llama_cpp"], action="append")
    ap.add_argument("--json", action="store_true", help="one JSON object per engine")
    return ap.parse_args()


async def run(args: argparse.Namespace) -> None:
    ctx = make_ctx(args.models_dir)
    only = set(args.only or ["pocketsphinx", "piper", "llama_cpp"])
    results = []
    if "pocketsphinx" in only:
        results.append(await bench_pocketsphinx(ctx, args.runs))
    if "piper" in only:
        results.append(await bench_piper(ctx, args.runs, args.threads))
    if "llama_cpp" in only:
        results.append(await bench_llama(ctx, args.runs, args.threads))
    for r in results:
        if args.json:
            print(json.dumps(r))
        else:
            print(r.pop("engine"))
            for k, v in r.items():
                print(f"  {k:28} {v}")


if __name__ == "__main__":
    asyncio.run(run(parse_args()))
