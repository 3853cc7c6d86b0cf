"""The models every call shares, loaded once per process.

The service creates one `EngineModels` at startup (off the event loop: loading takes a moment),
hands `vad_stream()` / `endpointing()` results to each call, and `aclose()`s it on shutdown.
It owns the inference thread pool and the two batch executors (Silero windows, smart-turn
queries) that gather requests from all live calls.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pipelines.inference import BatchExecutor, make_inference_pool
from pipelines.settings import TurnSettings, VadSettings
from pipelines.turn.endpointing import EndpointingPolicy
from pipelines.turn.smart_turn import SmartTurnModel
from pipelines.vad.base import VadStream
from pipelines.vad.factory import build_vad_stream
from pipelines.vad.silero import SileroModel

log = logging.getLogger(__name__)

SILERO_FILE = "silero_vad.onnx"
SMART_TURN_FILE = "smart-turn-v3.2-cpu.onnx"


class EngineModels:
    def __init__(
        self, silero: SileroModel, smart_turn: SmartTurnModel, pool: ThreadPoolExecutor
    ) -> None:
        self.silero = silero
        self.smart_turn = smart_turn
        self._pool = pool
        self._closed = False

    @classmethod
    def load(
        cls,
        models_dir: str | os.PathLike[str],
        *,
        threads: int = 2,
        max_batch: int = 128,
        max_wait_ms: float = 2.0,
        turn_max_batch: int = 4,
    ) -> EngineModels:
        """Load Silero + smart-turn from `models_dir` (the names app.model_store uses).

        `threads`, `max_batch`, `max_wait_ms` come from settings.inference. smart-turn batches
        are capped lower (`turn_max_batch`): one item costs ~40-60 ms (features + model), so big
        batches mostly add latency, and batching saves little past 4. smart-turn may use at most
        threads-1 pool threads at once, so Silero windows are never stuck behind it (with a
        single thread they share it: a turn check can delay VAD by one model run).
        """
        d = Path(models_dir).expanduser()
        missing = [n for n in (SILERO_FILE, SMART_TURN_FILE) if not (d / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"model files missing in {d}: {', '.join(missing)} (run `phonebooth models fetch`)"
            )
        pool = make_inference_pool(threads)
        try:
            silero = SileroModel(
                d / SILERO_FILE, pool=pool, max_batch=max_batch, max_wait_ms=max_wait_ms
            )
            smart_turn = SmartTurnModel(
                d / SMART_TURN_FILE,
                pool=pool,
                max_batch=min(turn_max_batch, max_batch),
                max_wait_ms=max_wait_ms,
                max_inflight=max(1, threads - 1),
            )
        except BaseException:
            pool.shutdown(wait=False)
            raise
        log.info("engine models loaded from %s (%d inference threads)", d, threads)
        return cls(silero, smart_turn, pool)

    @property
    def executors(self) -> tuple[BatchExecutor[Any, Any], ...]:
        """For metrics export: each has `.name` and `.stats`."""
        return (self.silero.executor, self.smart_turn.executor)

    def vad_stream(self, settings: VadSettings) -> VadStream:
        return build_vad_stream(settings, silero=self.silero)

    def endpointing(self, settings: TurnSettings) -> EndpointingPolicy:
        return EndpointingPolicy(self.smart_turn, settings)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.silero.aclose()
        await self.smart_turn.aclose()
        # Batches are finished (executors waited for them); no worker is busy now.
        self._pool.shutdown(wait=False)
