"""Silero VAD: one ONNX session per process, one batched run for every live call's window.

The model (v5, as shipped in pipecat's wheel) takes
    input  [B, 576] float32 — 64 samples of context (the previous window's tail) + a 512-sample
                              window at 16 kHz, scaled to [-1, 1]
    state  [2, B, 128] float32 — recurrent state, carried per stream
    sr     int64 scalar  — 16000
and returns output [B, 1] (speech probability) and stateN [2, B, 128]. Because the state has a
batch axis, streams are independent rows: a batched run gives each stream exactly what a run on
its own would (tests/pipelines/test_silero.py checks this).

Each call owns a `SileroVadStream` (state row, context, frame accumulator, hysteresis); the model
and the BatchExecutor are shared.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from pipelines.inference import BatchExecutor, cpu_onnx_session
from pipelines.settings import VadSettings
from pipelines.vad.base import VadEvent
from pipelines.vad.frames import as_int16_frame
from pipelines.vad.segmenter import SpeechSegmenter

SAMPLE_RATE = 16000
WINDOW = 512  # 32 ms at 16 kHz: the only window size the 16 kHz model accepts
CONTEXT = 64
STATE_SHAPE = (2, 128)  # per stream; the model's state is [2, B, 128]
# Below threshold-HYSTERESIS an ongoing segment counts as silence; between the two it continues.
# Silero's own iterator uses the same 0.15 band: it stops a breathy word tail from flapping.
HYSTERESIS = 0.15


@dataclass(slots=True)
class SileroRequest:
    """One stream's windows, in order: they run one after another on its state."""

    windows: np.ndarray  # [n, CONTEXT + WINDOW] float32 in [-1, 1], n >= 1
    state: np.ndarray  # [2, 128] float32


@dataclass(slots=True)
class SileroResult:
    probabilities: np.ndarray  # [n] float32, one per window
    state: np.ndarray  # [2, 128] float32, after the last window


class SileroModel:
    """The shared Silero session plus the executor that batches windows across calls."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        pool: Executor | None = None,
        max_batch: int = 128,
        max_wait_ms: float = 2.0,
    ) -> None:
        self._session = cpu_onnx_session(path)
        names = {i.name for i in self._session.get_inputs()}
        if names != {"input", "state", "sr"}:
            raise ValueError(f"{path} is not a Silero v5 VAD model (inputs {sorted(names)})")
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.executor: BatchExecutor[SileroRequest, SileroResult] = BatchExecutor(
            self.run_batch,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            pool=pool,
            name="silero_vad",
        )

    @staticmethod
    def initial_state() -> np.ndarray:
        return np.zeros(STATE_SHAPE, dtype=np.float32)

    def run_batch(self, requests: list[SileroRequest]) -> list[SileroResult]:
        """Every request's windows (called on the inference pool): one ONNX run per step, the
        k-th run holding the k-th window of each stream that has one. A stream that fell
        behind catches up in one round trip instead of one per window."""
        for r in requests:
            if r.windows.ndim != 2 or r.windows.shape[1] != CONTEXT + WINDOW:
                raise ValueError(f"Silero windows must be [n, {CONTEXT + WINDOW}] samples, "
                                 f"got {r.windows.shape}")
        counts = [len(r.windows) for r in requests]
        probs = [np.empty(n, dtype=np.float32) for n in counts]
        states = [r.state for r in requests]
        for step in range(max(counts)):
            rows = [i for i, n in enumerate(counts) if n > step]
            x = np.stack([requests[i].windows[step] for i in rows]).astype(np.float32, copy=False)
            state = np.stack([states[i] for i in rows], axis=1).astype(np.float32, copy=False)
            out, state_n = self._session.run(None, {"input": x, "state": state, "sr": self._sr})
            for j, i in enumerate(rows):
                probs[i][step] = out[j, 0]
                # Copy each row out so a stream never pins the whole batch's output array.
                states[i] = np.ascontiguousarray(state_n[:, j])
        return [SileroResult(p, s) for p, s in zip(probs, states, strict=True)]

    async def aclose(self) -> None:
        await self.executor.aclose()


class SileroVadStream:
    """Per-call Silero VAD (implements pipelines.vad.base.VadStream).

    20 ms frames in; every 512 accumulated samples make one window for the shared executor.
    `process_frames` takes every frame a call has waiting and sends all their windows in one
    request, so a call that fell behind (its VAD windows queued behind an end-of-turn check)
    catches up in one round trip, not one per window. A 20 ms frame completes at most one
    window (320 < 512), so each frame normally yields ≤ 1 event; with larger frames further
    events are queued and returned with the following frames.
    """

    def __init__(
        self,
        model: SileroModel,
        settings: VadSettings,
        *,
        executor: BatchExecutor[SileroRequest, SileroResult] | None = None,
    ) -> None:
        # Another executor (e.g. max_batch=1) lets tests and benchmarks run unbatched.
        self._executor = executor if executor is not None else model.executor
        self.threshold = settings.threshold
        self.neg_threshold = max(settings.threshold - HYSTERESIS, 0.01)
        self._segmenter = SpeechSegmenter(settings.start_ms, settings.stop_ms, SAMPLE_RATE)
        self._events: deque[VadEvent] = deque()
        self._clock = 0  # stream samples before the window being filled
        self._closed = False
        self.speaking = False
        self.probability = 0.0
        self._reset_model_state()

    def retune(self, settings: VadSettings) -> None:
        self.threshold = settings.threshold
        self.neg_threshold = max(settings.threshold - HYSTERESIS, 0.01)
        self._segmenter.retune(settings.start_ms, settings.stop_ms)

    def _reset_model_state(self) -> None:
        self._state = SileroModel.initial_state()
        # The next window's context (the last window's tail; zeros for a fresh model), then
        # the samples received since, not yet in a window.
        self._audio = np.zeros(CONTEXT, dtype=np.float32)

    async def process(self, frame: np.ndarray) -> VadEvent | None:
        return (await self.process_frames([frame]))[0]

    async def process_frames(self, frames: Sequence[np.ndarray]) -> list[VadEvent | None]:
        if self._closed:
            raise RuntimeError("VAD stream is closed")
        pcms = [as_int16_frame(f) for f in frames]
        # Queue the samples before any await: if the caller is cancelled while its windows are
        # in flight, nothing is lost — the next call re-runs them with the unchanged state.
        pending = len(self._audio) - CONTEXT  # samples not yet in a window
        self._audio = audio = np.concatenate(
            [self._audio, *(p.astype(np.float32) * (1.0 / 32768.0) for p in pcms)])
        n = (len(audio) - CONTEXT) // WINDOW
        probs = np.zeros(0, dtype=np.float32)
        if n:
            windows = np.stack([audio[i * WINDOW : i * WINDOW + CONTEXT + WINDOW]
                                for i in range(n)])
            result = await self._executor.submit(SileroRequest(windows, self._state))
            self._state = result.state
            probs = result.probabilities
            self.probability = float(probs[-1])
            self._audio = audio[n * WINDOW :]
        # Each window's verdict goes to the frame that completed it, in order, as a frame at
        # a time would have had it (a frame completing two windows queues the second event).
        out: list[VadEvent | None] = []
        fed = 0
        w = 0
        for pcm in pcms:
            fed += len(pcm)
            while w < n and (w + 1) * WINDOW <= pending + fed:
                limit = self.neg_threshold if self._segmenter.speaking else self.threshold
                event = self._segmenter.update(bool(probs[w] >= limit), self._clock, WINDOW)
                self._clock += WINDOW
                w += 1
                if event is not None:
                    self._events.append(event)
            out.append(self._events.popleft() if self._events else None)
        self.speaking = self._segmenter.speaking
        return out

    def reset(self) -> None:
        """Forget speech state and model memory; the stream clock keeps counting frames fed."""
        self._clock += len(self._audio) - CONTEXT
        self._reset_model_state()
        self._segmenter.reset()
        self._events.clear()
        self.speaking = False
        self.probability = 0.0

    async def aclose(self) -> None:
        # The model and executor are shared; a stream only drops its own state.
        self._closed = True
        self._events.clear()
