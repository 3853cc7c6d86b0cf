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
    samples: np.ndarray  # [CONTEXT + WINDOW] float32 in [-1, 1]
    state: np.ndarray  # [2, 128] float32


@dataclass(slots=True)
class SileroResult:
    probability: float
    state: np.ndarray  # [2, 128] float32


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
        """One ONNX run over every request (called on the inference pool)."""
        x = np.stack([r.samples for r in requests]).astype(np.float32, copy=False)
        state = np.stack([r.state for r in requests], axis=1).astype(np.float32, copy=False)
        if x.shape[1] != CONTEXT + WINDOW:
            raise ValueError(f"Silero input must be {CONTEXT + WINDOW} samples, got {x.shape[1]}")
        out, state_n = self._session.run(None, {"input": x, "state": state, "sr": self._sr})
        # Copy each row out so a stream never pins the whole batch's output array.
        return [
            SileroResult(float(out[i, 0]), np.ascontiguousarray(state_n[:, i]))
            for i in range(len(requests))
        ]

    async def aclose(self) -> None:
        await self.executor.aclose()


class SileroVadStream:
    """Per-call Silero VAD (implements pipelines.vad.base.VadStream).

    20 ms frames in; every 512 accumulated samples one window goes to the shared executor. A
    frame completes at most one window (320 < 512), so `process` normally yields ≤ 1 event;
    with larger frames further events are queued and returned by the following calls.
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
        self._buf = np.zeros(CONTEXT + WINDOW, dtype=np.float32)
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
        self._buf[:] = 0.0  # zero context, as for a fresh model
        self._fill = CONTEXT
        self._tail = np.zeros(0, dtype=np.float32)  # received, not yet placed in _buf

    async def process(self, frame: np.ndarray) -> VadEvent | None:
        if self._closed:
            raise RuntimeError("VAD stream is closed")
        pcm = as_int16_frame(frame)
        # Queue the samples before any await: if the caller is cancelled while a window is in
        # flight, nothing is lost — the next call re-runs that window with the unchanged state.
        self._tail = np.concatenate([self._tail, pcm.astype(np.float32) * (1.0 / 32768.0)])
        while True:
            take = min(len(self._buf) - self._fill, len(self._tail))
            if take:
                self._buf[self._fill : self._fill + take] = self._tail[:take]
                self._fill += take
                self._tail = self._tail[take:]
            if self._fill < len(self._buf):
                break
            result = await self._executor.submit(SileroRequest(self._buf.copy(), self._state))
            self._state = result.state
            self.probability = result.probability
            self._buf[:CONTEXT] = self._buf[-CONTEXT:]
            self._fill = CONTEXT
            limit = self.neg_threshold if self._segmenter.speaking else self.threshold
            event = self._segmenter.update(result.probability >= limit, self._clock, WINDOW)
            self._clock += WINDOW
            self.speaking = self._segmenter.speaking
            if event is not None:
                self._events.append(event)
        return self._events.popleft() if self._events else None

    def reset(self) -> None:
        """Forget speech state and model memory; the stream clock keeps counting frames fed."""
        self._clock += (self._fill - CONTEXT) + len(self._tail)
        self._reset_model_state()
        self._segmenter.reset()
        self._events.clear()
        self.speaking = False
        self.probability = 0.0

    async def aclose(self) -> None:
        # The model and executor are shared; a stream only drops its own state.
        self._closed = True
        self._events.clear()
