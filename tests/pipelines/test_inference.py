"""The shared micro-batching executor: gathering, ordering, errors, cancellation, stats."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipelines.inference import BatchExecutor, ExecutorClosedError, Histogram


class Recorder:
    """run_batch that doubles its inputs and remembers every batch it saw."""

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.delay_s = delay_s
        self.gate = gate
        self.started = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.threads.add(threading.current_thread().name)
        self.started.set()
        if self.gate is not None:
            self.gate.wait(5)
        if self.delay_s:
            time.sleep(self.delay_s)  # blocks its pool thread, like a real ONNX run
        self.batches.append(list(items))
        return [2 * i for i in items]


async def test_concurrent_requests_share_one_batch_and_keep_order() -> None:
    rec = Recorder()
    ex = BatchExecutor(rec, max_batch=64, max_wait_ms=20)
    try:
        results = await asyncio.gather(*(ex.submit(i) for i in range(10)))
        assert results == [2 * i for i in range(10)]
        assert rec.batches == [list(range(10))]
        assert ex.stats.batches == 1
        assert ex.stats.completed == 10
        assert ex.stats.batch_size.count == 1 and ex.stats.batch_size.sum == 10
        assert ex.stats.latency_ms.count == 10
        assert not any(name.startswith("MainThread") for name in rec.threads)
    finally:
        await ex.aclose()


async def test_max_batch_splits_and_zero_wait_still_gathers_one_tick() -> None:
    rec = Recorder()
    ex = BatchExecutor(rec, max_batch=4, max_wait_ms=0)
    try:
        results = await asyncio.gather(*(ex.submit(i) for i in range(10)))
        assert results == [2 * i for i in range(10)]
        assert sorted(len(b) for b in rec.batches) == [2, 4, 4]
        assert sorted(x for b in rec.batches for x in b) == list(range(10))
    finally:
        await ex.aclose()


async def test_lone_request_is_answered_after_the_wait() -> None:
    rec = Recorder()
    ex = BatchExecutor(rec, max_batch=128, max_wait_ms=2)
    try:
        assert await ex.submit(21) == 42
        assert rec.batches == [[21]]
    finally:
        await ex.aclose()


async def test_model_error_reaches_every_caller_in_the_batch() -> None:
    def boom(items: list[int]) -> list[int]:
        raise RuntimeError("onnx exploded")

    ex = BatchExecutor(boom, max_batch=8, max_wait_ms=5)
    try:
        results = await asyncio.gather(*(ex.submit(i) for i in range(3)), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and "exploded" in str(r) for r in results)
        assert ex.stats.failed == 3
        # The executor keeps working after a failed batch.
        ex._run_batch = Recorder()  # type: ignore[assignment]
        assert await ex.submit(1) == 2
    finally:
        await ex.aclose()


async def test_wrong_result_count_is_an_error_not_a_misroute() -> None:
    ex = BatchExecutor(lambda items: [0], max_batch=8, max_wait_ms=5)
    try:
        results = await asyncio.gather(ex.submit(1), ex.submit(2), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
    finally:
        await ex.aclose()


async def test_cancelled_while_queued_is_left_out_of_the_batch() -> None:
    rec = Recorder()
    ex = BatchExecutor(rec, max_batch=64, max_wait_ms=50)
    try:
        doomed = asyncio.create_task(ex.submit(99))
        kept = asyncio.create_task(ex.submit(1))
        await asyncio.sleep(0)  # both queued, timer pending
        doomed.cancel()
        assert await kept == 2
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert rec.batches == [[1]]
        assert ex.stats.cancelled == 1
    finally:
        await ex.aclose()


async def test_cancelled_while_running_does_not_disturb_batch_mates() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    ex = BatchExecutor(rec, max_batch=2, max_wait_ms=50)
    try:
        a = asyncio.create_task(ex.submit(1))
        b = asyncio.create_task(ex.submit(2))
        # max_batch reached -> dispatched at once; wait until the pool thread runs it.
        assert await asyncio.to_thread(rec.started.wait, 5)
        a.cancel()
        gate.set()
        assert await b == 4
        with pytest.raises(asyncio.CancelledError):
            await a
        assert rec.batches == [[1, 2]]
    finally:
        gate.set()
        await ex.aclose()


async def test_inflight_cap_holds_requests_for_the_next_batch() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    pool = ThreadPoolExecutor(max_workers=3)
    ex = BatchExecutor(rec, max_batch=8, max_wait_ms=1, pool=pool, max_inflight=1)
    try:
        first = asyncio.create_task(ex.submit(0))
        assert await asyncio.to_thread(rec.started.wait, 5)  # batch [0] is running
        later = [asyncio.create_task(ex.submit(i)) for i in range(1, 6)]
        await asyncio.sleep(0.05)  # well past max_wait: still held, a thread is free
        assert ex.stats.batches == 1
        gate.set()
        assert await first == 0
        assert await asyncio.gather(*later) == [2, 4, 6, 8, 10]
        assert rec.batches == [[0], [1, 2, 3, 4, 5]]
    finally:
        gate.set()
        await ex.aclose()
        pool.shutdown()


async def test_running_batch_does_not_block_the_event_loop() -> None:
    rec = Recorder(delay_s=0.3)
    ex = BatchExecutor(rec, max_batch=8, max_wait_ms=1)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.create_task(ticker())
    try:
        assert await ex.submit(5) == 10
        # ~30 ticks fit in 0.3 s; on a loaded 2-core box still clearly more than a handful.
        assert ticks >= 5
    finally:
        t.cancel()
        await ex.aclose()


async def test_close_fails_queued_requests_and_refuses_new_ones() -> None:
    rec = Recorder()
    ex = BatchExecutor(rec, max_batch=64, max_wait_ms=1000)
    queued = asyncio.create_task(ex.submit(1))
    await asyncio.sleep(0)
    await ex.aclose()
    with pytest.raises(ExecutorClosedError):
        await queued
    with pytest.raises(ExecutorClosedError):
        await ex.submit(2)
    assert rec.batches == []


def test_histogram_buckets_and_quantiles() -> None:
    h = Histogram((1, 2, 5))
    for v in (0.5, 1, 1.5, 3, 10):
        h.observe(v)
    assert h.cumulative() == [(1, 2), (2, 3), (5, 4), (float("inf"), 5)]
    assert h.count == 5 and h.sum == pytest.approx(16.0) and h.max == 10
    assert h.quantile(0.5) == 2
    assert h.quantile(1.0) == 10  # +Inf bucket reports the observed max
    with pytest.raises(ValueError):
        Histogram((3, 1))


def test_a_batch_left_running_by_a_closed_loop_does_not_hold_the_cap() -> None:
    """One executor serves several event loops over its life (a model shared across servers or
    test loops). A loop that closes while its batch runs never hears back; the next loop's
    requests must not wait behind that batch forever."""
    gate = threading.Event()
    rec = Recorder(gate=gate)
    pool = ThreadPoolExecutor(max_workers=2)
    ex = BatchExecutor(rec, max_batch=8, max_wait_ms=1, pool=pool, max_inflight=1)

    async def abandon() -> None:
        caller = asyncio.create_task(ex.submit(1))
        assert await asyncio.to_thread(rec.started.wait, 5)  # running when the loop goes
        caller.cancel()  # the caller is gone with its loop; the batch still runs
        with pytest.raises(asyncio.CancelledError):
            await caller

    first = asyncio.new_event_loop()
    first.run_until_complete(abandon())
    first.close()
    gate.set()

    async def later() -> int:
        return await asyncio.wait_for(ex.submit(2), 5)

    try:
        assert asyncio.run(later()) == 4
    finally:
        pool.shutdown()


def _threads_after_loading(models_dir: Path, telemetry: str | None) -> int:
    """Threads of a fresh process that imported the engine and loaded Silero through it."""
    # onnxruntime also stays quiet when it sees `CI` set, which would hide the difference.
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "CI")}
    if telemetry is not None:
        env["ORT_DISABLE_TELEMETRY"] = telemetry
    code = (
        "import os, sys\n"
        "from pipelines.inference import cpu_onnx_session\n"
        "cpu_onnx_session(sys.argv[1])\n"
        "assert os.environ['ORT_DISABLE_TELEMETRY'] == sys.argv[2], os.environ\n"
        "print(len(os.listdir('/proc/self/task')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(models_dir / "silero_vad.onnx"), telemetry or "1"],
        env=env, capture_output=True, text=True, check=True, timeout=60)
    return int(out.stdout.strip())


def test_onnxruntime_telemetry_is_off_unless_asked_for(models_dir: Path) -> None:
    """onnxruntime's usage telemetry to Microsoft (its own thread, and DNS lookups of its
    collector) stays off in a server that did not ask for it; ORT_DISABLE_TELEMETRY=0 allows it."""
    ours = _threads_after_loading(models_dir, None)  # asserts the variable is set
    allowed = _threads_after_loading(models_dir, "0")
    if allowed == _threads_after_loading(models_dir, "1"):
        pytest.skip("this onnxruntime starts no telemetry thread")
    assert ours < allowed  # the telemetry thread is not there
