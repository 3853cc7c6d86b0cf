"""Per-stream Silero VAD cost at 1, 32 and 128 concurrent streams, batched vs unbatched.

    python bench/vad_bench.py [--streams 1,32,128] [--seconds 3] [--threads 1]

Rows (CPU = process CPU time, all threads, per second of audio per stream):
  onnx-alone    one ONNX run per stream per 32 ms window (B=1), no asyncio: the model floor
  onnx-batched  one ONNX run per window step for all streams (B=N), no asyncio
  stream-alone  SileroVadStream per call, executor with max_batch=1 (every window its own run)
  stream-batched SileroVadStream per call through the shared BatchExecutor (the engine's path)
  webrtc        WebRtcVadStream per call (inline, no model), for comparison
  driver        the real-time pacing loop alone (no VAD): subtract it from stream-*/webrtc
"stream-*" rows pace every stream in real time (20 ms frames, random phase, like live calls),
so batch sizes are what a live server would see, not an idealised lockstep.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.inference import BatchExecutor, make_inference_pool
from pipelines.settings import VadSettings
from pipelines.vad.silero import (
    CONTEXT,
    WINDOW,
    SileroModel,
    SileroRequest,
    SileroVadStream,
)

FRAME = 320


def test_audio(seconds: float, seed: int) -> np.ndarray:
    """Speech-like load: bursts of harmonic tone + noise separated by quiet gaps. Silero's cost
    does not depend on content; the bursts just make the streams change state now and then."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    f0 = rng.uniform(100, 220)
    voiced = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    envelope = (np.sin(2 * np.pi * t / rng.uniform(1.0, 2.0)) > 0).astype(np.float64)
    audio = 6000 * voiced * envelope + rng.standard_normal(n) * 200
    return np.clip(audio, -32768, 32767).astype(np.int16)


def onnx_rows(model: SileroModel, n: int, seconds: float) -> list[tuple]:
    windows = int(seconds * 16000) // WINDOW
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((n, CONTEXT + WINDOW)) * 0.1).astype(np.float32)
    reqs = [SileroRequest(x[i : i + 1], SileroModel.initial_state()) for i in range(n)]
    rows = []
    for name, run in (
        ("onnx-alone", lambda: [model.run_batch([r]) for r in reqs]),
        ("onnx-batched", lambda: model.run_batch(reqs)),
    ):
        run()  # warm-up
        c0 = time.process_time()
        for _ in range(windows):
            run()
        cpu = time.process_time() - c0
        rows.append((name, n, cpu, seconds, 1 if name == "onnx-alone" else n, 0.0))
    return rows


async def paced_streams(streams: list, audio: list[np.ndarray], seconds: float) -> float:
    """Feed each stream 20 ms frames in real time; returns the worst lag behind real time (ms)."""
    loop = asyncio.get_running_loop()
    worst = 0.0

    async def run(stream, pcm: np.ndarray) -> None:
        nonlocal worst
        await asyncio.sleep(random.uniform(0, 0.02))
        due = loop.time()
        for i in range(int(seconds * 1000) // 20):
            frame = pcm[i * FRAME : (i + 1) * FRAME]
            await stream.process(frame)
            due += 0.02
            lag = loop.time() - due
            worst = max(worst, lag)
            if lag < 0:
                await asyncio.sleep(-lag)

    await asyncio.gather(*(run(s, a) for s, a in zip(streams, audio, strict=True)))
    return worst * 1000


async def stream_rows(
    model: SileroModel, pool, n: int, seconds: float, max_wait_ms: float
) -> list[tuple]:
    audio = [test_audio(seconds, seed) for seed in range(n)]
    rows = []
    for name, max_batch in (("stream-alone", 1), ("stream-batched", 128)):
        ex = BatchExecutor(
            model.run_batch, max_batch=max_batch, max_wait_ms=max_wait_ms, pool=pool, name=name
        )
        streams = [SileroVadStream(model, VadSettings(), executor=ex) for _ in range(n)]
        c0 = time.process_time()
        lag = await paced_streams(streams, audio, seconds)
        cpu = time.process_time() - c0
        rows.append((name, n, cpu, seconds, ex.stats.batch_size.mean, lag))
        await ex.aclose()

    from pipelines.vad.webrtc import WebRtcVadStream

    webrtc = [WebRtcVadStream(VadSettings(engine="webrtc")) for _ in range(n)]
    c0 = time.process_time()
    lag = await paced_streams(webrtc, audio, seconds)
    rows.append(("webrtc", n, time.process_time() - c0, seconds, 0.0, lag))

    c0 = time.process_time()
    lag = await paced_streams([_NoVad() for _ in range(n)], audio, seconds)
    rows.append(("driver", n, time.process_time() - c0, seconds, 0.0, lag))
    return rows


class _NoVad:
    async def process(self, frame: np.ndarray) -> None:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--streams", default="1,32,128", help="comma-separated stream counts")
    ap.add_argument("--seconds", type=float, default=3.0, help="audio per stream per row")
    ap.add_argument("--threads", type=int, default=1, help="inference pool threads")
    ap.add_argument("--max-wait-ms", type=float, default=2.0, help="batch gather window")
    ap.add_argument(
        "--models-dir",
        default=os.environ.get("PHONEBOOTH_MODELS_DIR", "~/.cache/phonebooth/models"),
    )
    args = ap.parse_args()
    counts = [int(c) for c in args.streams.split(",") if c.strip()]

    pool = make_inference_pool(args.threads)
    path = Path(args.models_dir).expanduser() / "silero_vad.onnx"
    model = SileroModel(path, pool=pool)
    print(
        f"Silero VAD cost per stream — {args.seconds:g} s audio/stream, pool threads "
        f"{args.threads}, gather {args.max_wait_ms:g} ms, {os.cpu_count()} CPUs visible\n"
    )
    header = (
        f"{'mode':<15}{'streams':>8}{'CPU ms/stream/s':>17}{'% core/stream':>15}"
        f"{'streams/core':>14}{'mean batch':>12}{'worst lag ms':>14}"
    )
    print(header)
    print("-" * len(header))
    for n in counts:
        rows = onnx_rows(model, n, args.seconds)
        rows += asyncio.run(stream_rows(model, pool, n, args.seconds, args.max_wait_ms))
        for name, streams, cpu, secs, batch, lag in rows:
            per_stream_s = cpu / streams / secs  # CPU seconds per stream per audio second
            capacity = 1 / per_stream_s if per_stream_s > 0 else float("inf")
            print(
                f"{name:<15}{streams:>8}{per_stream_s * 1000:>17.2f}{per_stream_s * 100:>15.2f}"
                f"{capacity:>14.0f}{batch:>12.1f}{lag:>14.1f}"
            )
        print()
    asyncio.run(model.aclose())
    pool.shutdown()


if __name__ == "__main__":
    main()
