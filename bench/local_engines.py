"""Speed of the embedded offline engines, measured through their provider adapters.

    python bench/local_engines.py              # both, 5 runs each
    python bench/local_engines.py --only piper --runs 10 --json

Whisper's speed and accuracy are measured by bench/local_quality.py (`stt`).
- piper: real-time factor per sentence and first-chunk latency (request → first audio).
- llama.cpp: time to first token for a fresh prompt and for a follow-up turn that reuses the
  cached prefix, decode speed in tokens per second, and memory (server process and llama.cpp
  worker processes: RSS each, PSS total) once the model is loaded and after the runs.

RTF is reported both as wall time and as process CPU time (all threads) per audio second; the
CPU figure is what bounds calls per core. Medians over `--runs`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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


def _kb(pid: int, path: str, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_mb() -> dict[str, float]:
    """Resident memory of this process and of its children (llama.cpp workers), in MB: RSS
    counts shared pages (the mmapped model) in every process, PSS splits them fairly, so the
    PSS total is what the machine really spends."""
    me = os.getpid()
    children: list[int] = []
    for task in Path(f"/proc/{me}/task").iterdir():
        with contextlib.suppress(OSError):
            children += [int(p) for p in (task / "children").read_text().split()]
    procs = [me, *children]
    return {"rss_server": round(_kb(me, "status", "VmRSS") / 1024, 1),
            "rss_workers": round(sum(_kb(p, "status", "VmRSS") for p in children) / 1024, 1),
            "pss_total": round(sum(_kb(p, "smaps_rollup", "Pss") for p in procs) / 1024, 1)}


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def bench_piper(ctx: ProviderContext, runs: int, threads: int) -> dict[str, Any]:
    from providers.tts.piper import PiperTTS, PiperTTSConfig

    tts = PiperTTS(PiperTTSConfig(threads=threads), ctx)
    before = memory_mb()
    with Timer() as load:
        await tts.warm()
    loaded = memory_mb()
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
            "memory_mb_before_load": before, "memory_mb_loaded": loaded,
            "first_chunk_ms": {f"{k[:24]}... ({med(first_s[k]):.1f} s)": round(med(v), 1)
                               for k, v in first.items()}}


async def _speech_16k(ctx: ProviderContext, text: str) -> np.ndarray:
    from providers.tts.piper import PiperTTS, PiperTTSConfig

    tts = PiperTTS(PiperTTSConfig(noise_scale=0.0, noise_w_scale=0.0), ctx)
    resampler = StreamResampler(22050, 16000)
    parts = [resampler.process(c.samples) async for c in tts.synthesize(text)]
    pad = np.zeros(3200, dtype=np.int16)
    return np.concatenate([pad, *parts, pad])


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

    idle_memory = memory_mb()
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
            "tokens_per_s": round(med([x for x in tps if x == x]), 1),
            "memory_mb_loaded": idle_memory, "memory_mb_after": memory_mb(),
            **_pipe_delay(llm),
            "sample_reply": reply}


def _pipe_delay(llm: Any) -> dict[str, float]:
    """Mean delay a token spends between the llama.cpp worker and the consumer (worker builds
    only: in-process builds have no pipe)."""
    slot = getattr(llm, "_last_slot", None)
    worker = getattr(slot, "worker", None)
    if worker is None or not worker.items:
        return {}
    return {"pipe_ms_per_token": round(worker.item_delay_s / worker.items * 1000, 3)}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="piper / llama.cpp threads")
    ap.add_argument("--models-dir", default=os.environ.get(
        "PHONEBOOTH_MODELS_DIR", str(Path("~/.cache/phonebooth/models").expanduser())))
    ap.add_argument("--only", choices=["piper", "llama_cpp"], action="append")
    ap.add_argument("--json", action="store_true", help="one JSON object per engine")
    return ap.parse_args()


async def run(args: argparse.Namespace) -> None:
    ctx = make_ctx(args.models_dir)
    only = set(args.only or ["piper", "llama_cpp"])
    results = []
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
