"""Shared micro-batching executor for CPU models (Silero VAD, smart-turn, ...).

Every live call submits single items (one VAD window, one end-of-turn query). Items that arrive
within `max_wait_ms` of the first pending one — or as soon as `max_batch` are pending — go to the
model as ONE batched call on a small shared thread pool. Batched ONNX runs cost far less per item
than one run per item, and onnxruntime releases the GIL, so the event loop keeps serving frames
while a batch runs.

Observability lives in `ExecutorStats` (plain counters and fixed-bucket histograms, no Prometheus
import): the service exports them as it likes.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import logging
import os
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    # imported lazily at run time: onnxruntime takes a while to import
    from onnxruntime import InferenceSession

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

LATENCY_BUCKETS_MS: tuple[float, ...] = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 250)
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    """Cumulative-bucket histogram, Prometheus-shaped (le buckets + sum + count)."""

    __slots__ = ("bounds", "count", "counts", "max", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(bounds) or not bounds:
            raise ValueError("histogram bounds must be a non-empty ascending sequence")
        self.bounds: tuple[float, ...] = tuple(bounds)
        # counts[i] = observations <= bounds[i] (non-cumulative here; cumulated on export);
        # the extra last slot is +Inf.
        self.counts: list[int] = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0
        self.max = 0.0

    def observe(self, value: float) -> None:
        # First bucket whose upper bound is >= value (len(bounds) = the +Inf bucket).
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1
        if value > self.max:
            self.max = value

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    def cumulative(self) -> list[tuple[float, int]]:
        """[(upper bound, observations <= bound)], ending with (inf, count)."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the q-quantile (coarse, bucket resolution)."""
        if not self.count:
            return 0.0
        target = q * self.count
        for bound, running in self.cumulative():
            if running >= target:
                return bound if bound != float("inf") else self.max
        return self.max


@dataclass
class ExecutorStats:
    name: str
    requests: int = 0  # items submitted
    completed: int = 0  # items answered with a result
    failed: int = 0  # items answered with an exception (model error, closed executor)
    cancelled: int = 0  # items whose caller went away before the answer
    batches: int = 0
    # submit -> answer, per item (queueing + batch run)
    latency_ms: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_MS))
    # wall time of one run_batch call
    run_ms: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_MS))
    batch_size: Histogram = field(default_factory=lambda: Histogram(BATCH_SIZE_BUCKETS))

    def snapshot(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "batches": self.batches,
            "mean_batch_size": self.batch_size.mean,
            "mean_latency_ms": self.latency_ms.mean,
            "p99_latency_ms": self.latency_ms.quantile(0.99),
            "mean_run_ms": self.run_ms.mean,
        }


class ExecutorClosedError(RuntimeError):
    pass


class _Pending(Generic[T, R]):
    __slots__ = ("future", "item", "t_submit")

    def __init__(self, item: T, future: asyncio.Future[R], t_submit: float) -> None:
        self.item = item
        self.future = future
        self.t_submit = t_submit


class _LoopQueue(Generic[T, R]):
    """Items pending on one event loop (the service has one; tests create one per test)."""

    __slots__ = ("items", "timer")

    def __init__(self) -> None:
        self.items: list[_Pending[T, R]] = []
        self.timer: asyncio.Handle | None = None


def cpu_onnx_session(path: str | os.PathLike[str]) -> InferenceSession:
    """One onnxruntime CPU session, single-threaded by design; one per model file per process.

    Parallelism comes from batching and from the pool's threads running different batches, not
    from intra-op threads: on a small box those would fight the event loop and each other.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    return _load_session(str(Path(path).resolve()))


@functools.lru_cache(maxsize=8)
def _load_session(path: str) -> InferenceSession:
    # Sessions are immutable and `run` is thread-safe, so every executor (and every app
    # instance in the process) can share one instead of paying the load again.
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # warnings about unused initializers are noise here
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def make_inference_pool(threads: int) -> ThreadPoolExecutor:
    """The small pool every batched model shares (size = settings.inference.threads)."""
    if threads < 1:
        raise ValueError("inference pool needs at least one thread")
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="phonebooth-infer")


class BatchExecutor(Generic[T, R]):
    """Gathers single-item requests from all callers into batched `run_batch` calls.

    run_batch(items) must return one result per item, in order; it runs on `pool`, never on the
    event loop. If it raises, every item of that batch gets the exception.

    Cancelling a caller that waits in `submit` is safe: a request still queued is dropped before
    the batch is formed; one already running finishes and its result is discarded.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], list[R]],
        *,
        max_batch: int = 128,
        max_wait_ms: float = 2.0,
        pool: Executor | None = None,
        max_inflight: int | None = None,
        name: str = "model",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_inflight is not None and max_inflight < 1:
            raise ValueError("max_inflight must be >= 1 (or None for no limit)")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        # Cap on batches running at once. A slow model (smart-turn: ~40 ms per item) capped at
        # 1 can never occupy every pool thread, so VAD windows keep flowing; requests arriving
        # meanwhile simply join the next batch.
        self.max_inflight = max_inflight
        # A private single thread when no shared pool is given (tests, one-off tools).
        self._own_pool = pool is None
        self._pool: Executor = pool if pool is not None else make_inference_pool(1)
        self.name = name
        self.stats = ExecutorStats(name)
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopQueue[T, R]] = (
            weakref.WeakKeyDictionary()
        )
        self._inflight: set[asyncio.Future[list[R]]] = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def submit(self, item: T) -> R:
        if self._closed:
            raise ExecutorClosedError(f"{self.name} executor is closed")
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _LoopQueue()
        fut: asyncio.Future[R] = loop.create_future()
        queue.items.append(_Pending(item, fut, time.perf_counter()))
        self.stats.requests += 1
        if len(queue.items) >= self.max_batch and self._has_capacity():
            self._flush(loop, queue)
        elif queue.timer is None:
            if self.max_wait_s == 0:
                # Still gather whatever else is submitted in this loop iteration.
                queue.timer = loop.call_soon(self._flush, loop, queue)
            else:
                queue.timer = loop.call_later(self.max_wait_s, self._flush, loop, queue)
        try:
            return await fut
        except asyncio.CancelledError:
            if not fut.done() or fut.cancelled():
                self.stats.cancelled += 1
            raise

    def _has_capacity(self) -> bool:
        if self.max_inflight is None:
            return True
        if len(self._inflight) >= self.max_inflight:
            # A batch whose event loop has closed never runs its done callback (one executor
            # can outlive a loop: a shared model across test loops or a restarted server):
            # left counted, it would hold the cap forever and every later request would wait.
            self._inflight = {f for f in self._inflight if not f.get_loop().is_closed()}
        return len(self._inflight) < self.max_inflight

    def _flush(self, loop: asyncio.AbstractEventLoop, queue: _LoopQueue[T, R]) -> None:
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        # At the in-flight cap the items stay queued; the finishing batch flushes them.
        while queue.items and self._has_capacity():
            # Drop requests whose callers were cancelled while queued.
            live = [p for p in queue.items[: self.max_batch] if not p.future.done()]
            del queue.items[: self.max_batch]
            if live:
                self._dispatch(loop, queue, live)
            # Leftovers beyond max_batch go right away too (capacity permitting).

    def _dispatch(
        self,
        loop: asyncio.AbstractEventLoop,
        queue: _LoopQueue[T, R],
        batch: list[_Pending[T, R]],
    ) -> None:
        items = [p.item for p in batch]
        t_start = time.perf_counter()
        try:
            run = loop.run_in_executor(self._pool, self._run_batch, items)
        except RuntimeError as exc:  # pool already shut down
            self._fail(batch, ExecutorClosedError(f"{self.name} executor pool is closed: {exc}"))
            return
        self._inflight.add(run)
        self.stats.batches += 1
        self.stats.batch_size.observe(len(items))

        def done(task: asyncio.Future[list[R]]) -> None:
            self._inflight.discard(task)
            now = time.perf_counter()
            self.stats.run_ms.observe((now - t_start) * 1000.0)
            self._answer(batch, task, now)
            if queue.items and not self._closed:
                self._flush(loop, queue)  # requests held back by max_inflight

        run.add_done_callback(done)

    def _answer(
        self, batch: list[_Pending[T, R]], task: asyncio.Future[list[R]], now: float
    ) -> None:
        if task.cancelled():
            self._fail(batch, ExecutorClosedError(f"{self.name} batch was cancelled"))
            return
        exc = task.exception()
        if exc is None:
            results = task.result()
            if not isinstance(results, list) or len(results) != len(batch):
                exc = RuntimeError(
                    f"{self.name}: run_batch returned {type(results).__name__} of wrong "
                    f"length for a batch of {len(batch)}"
                )
        if exc is not None:
            log.warning("%s batch of %d failed: %r", self.name, len(batch), exc)
            self._fail(batch, exc)
            return
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)
                self.stats.completed += 1
                self.stats.latency_ms.observe((now - pending.t_submit) * 1000.0)

    def _fail(self, batch: list[_Pending[T, R]], exc: BaseException) -> None:
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(exc)
                self.stats.failed += 1

    async def aclose(self) -> None:
        """Refuse new work, fail queued requests, wait for running batches to finish."""
        if self._closed:
            return
        self._closed = True
        for queue in list(self._queues.values()):
            if queue.timer is not None:
                queue.timer.cancel()
                queue.timer = None
            self._fail(queue.items, ExecutorClosedError(f"{self.name} executor closed"))
            queue.items.clear()
        loop = asyncio.get_running_loop()
        mine = [f for f in self._inflight if f.get_loop() is loop]
        if mine:
            await asyncio.gather(*mine, return_exceptions=True)
        if self._own_pool:
            # shutdown(wait=True) joins the worker thread: do it off the loop.
            await asyncio.to_thread(self._pool.shutdown, wait=True)
