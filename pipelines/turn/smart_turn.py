"""smart-turn v3 end-of-turn model (ONNX, audio only), batched across calls.

Model: `input_features` float32 [B, 80, 800] (pipelines.turn.features) -> `logits` [B, 1]. Despite
the name the output already went through a sigmoid in the exported graph: it is P(turn complete)
in [0, 1] (verified on real audio; pipecat reads it the same way).

Feature extraction (~10 ms of numpy per utterance) runs inside the batch on the inference pool,
never on the event loop.
"""

from __future__ import annotations

import os
from concurrent.futures import Executor

import numpy as np

from pipelines.inference import BatchExecutor, cpu_onnx_session
from pipelines.turn.features import N_FRAMES, N_MELS, N_SAMPLES, log_mel_batch


class SmartTurnModel:
    """Implements pipelines.turn.base.EndOfTurnModel; one instance per process."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        pool: Executor | None = None,
        max_batch: int = 4,
        max_wait_ms: float = 2.0,
        max_inflight: int | None = 1,
    ) -> None:
        self._session = cpu_onnx_session(path)
        inputs = self._session.get_inputs()
        if [i.name for i in inputs] != ["input_features"] or inputs[0].shape[1:] != [
            N_MELS,
            N_FRAMES,
        ]:
            raise ValueError(f"{path} is not a smart-turn v3 model (inputs {inputs})")
        self.executor: BatchExecutor[np.ndarray, float] = BatchExecutor(
            self.run_batch,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            pool=pool,
            # ~40 ms per item: never let end-of-turn batches take every pool thread from VAD.
            max_inflight=max_inflight,
            name="smart_turn",
        )

    def run_batch(self, audios: list[np.ndarray]) -> list[float]:
        """P(complete) per utterance (called on the inference pool)."""
        features = log_mel_batch(audios)
        (probs,) = self._session.run(["logits"], {"input_features": features})
        return [float(p) for p in np.asarray(probs).reshape(len(audios))]

    async def predict(self, audio: np.ndarray) -> float:
        """P(turn complete) for 16 kHz int16 user audio; only the last 8 s matter."""
        a = np.asarray(audio)
        # Validate here, not in the batch: one call's bad input must not fail its batch-mates.
        if a.ndim != 1:
            raise ValueError(f"audio must be mono (1-D), got shape {a.shape}")
        if a.dtype != np.int16 and not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"audio must be int16 PCM or float in [-1, 1], got {a.dtype}")
        # Copy just the tail the model reads: the caller keeps appending to its buffer.
        return await self.executor.submit(a[-N_SAMPLES:].copy())

    async def aclose(self) -> None:
        await self.executor.aclose()
