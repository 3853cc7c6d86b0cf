"""A supervised pool of native worker processes for one engine configuration, shared by calls.

Each worker process (`process`) runs one job at a time, so concurrent jobs need one worker each.
The pool holds up to `capacity` of them (the process-wide bound on concurrent jobs for that
configuration). A caller may ask for the worker it used last (llama.cpp then reuses the common
prompt prefix it keeps from that caller's last turn).

A crash costs the one job running in that worker, which fails at once with `WorkerDied` (the call
falls back or apologises), and the pool starts a replacement. Replacements back off when workers
keep dying soon after starting (none for the first death, then 1, 2, 4 ... 30 s); while the pool
waits, requests that would need a new worker fail at once rather than wait, so calls fall back
instead of sitting in silence. `problem()` says what is wrong for /readyz.

Waiting is async and loop-agnostic (a worker may be released from any thread and handed to a
waiter on any event loop); workers start on a thread (a start blocks until the engine is loaded).
Pools live in `ctx.shared[SHARED_KEY]`, keyed by their `WorkerSpec`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from providers.base import ProviderError
from providers.native.process import NativeWorker, WorkerSpec, WorkerStopped

log = logging.getLogger(__name__)

# A worker that dies sooner than this after starting counts as a failed start for the backoff.
STABLE_S = 60.0
BACKOFF_MAX_S = 30.0
# This many failed starts (or early deaths) in a row and /readyz reports the pool.
CRASH_LOOP = 3

SHARED_KEY = "native_workers"


@dataclass(eq=False)
class Slot:
    worker: NativeWorker
    index: int


@dataclass(eq=False)
class _Waiter:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Slot] = field(repr=False)


def backoff_s(failures: int) -> float:
    """Delay before the next start after `failures` failed starts or early deaths in a row."""
    if failures <= 1:
        return 0.0
    return min(BACKOFF_MAX_S, 2.0 ** (failures - 2))


class NativePool:
    def __init__(self, spec: WorkerSpec, capacity: int) -> None:
        self.spec = spec
        self.capacity = capacity
        self._lock = threading.Lock()
        self._free: list[Slot] = []
        self._created = 0  # workers alive or starting
        self._index = 0
        self._waiters: deque[_Waiter] = deque()
        self._workers: set[NativeWorker] = set()
        self._failures = 0  # failed starts and early deaths in a row
        self._retry_at = 0.0  # monotonic: no new worker before this
        self._timer: threading.Timer | None = None
        self._closed = False
        self.start_error: str | None = None  # why the last start failed (cleared by a success)
        self.last_death: str | None = None
        self.restarts = 0  # workers started to replace dead ones (observable)
        self.in_use = 0  # observable for tests and metrics
        self.peak_in_use = 0
        # A pool dropped without close() (a test's context) still stops its workers.
        weakref.finalize(self, _kill_all, self._workers)

    def grow(self, capacity: int) -> None:
        """Raise the bound (a later agent config asked for more); never shrinks live workers."""
        with self._lock:
            self.capacity = max(self.capacity, capacity)

    def problem(self) -> str | None:
        """Why the pool cannot serve (for /readyz), or None."""
        with self._lock:
            if self.start_error is not None:
                return f"a {self.spec.label} worker cannot start: {self.start_error}"
            if self._failures >= CRASH_LOOP:
                return f"{self.spec.label} workers keep crashing: {self.last_death}"
            return None

    def busy_workers(self) -> list[NativeWorker]:
        """The live workers running a job now (or held by a request)."""
        with self._lock:
            free = {id(s.worker) for s in self._free}
            return [w for w in self._workers if w.alive and id(w) not in free]

    def _take(self, slot: Slot) -> Slot:
        self.in_use += 1
        self.peak_in_use = max(self.peak_in_use, self.in_use)
        return slot

    @overload
    async def acquire(self, prefer: Slot | None = None) -> Slot: ...
    @overload
    async def acquire(self, prefer: Slot | None = None, *, wait: bool) -> Slot | None: ...

    async def acquire(self, prefer: Slot | None = None, *, wait: bool = True) -> Slot | None:
        """A worker: `prefer` if it is free, else another free one, else a newly started one
        while under capacity, else the next one released. With `wait=False`, None instead of
        waiting for a release (work that must never delay a generation, e.g. a prefill)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closed:
                raise ProviderError(self.spec.provider, f"the {self.spec.label} pool is shut down")
            if self._free:
                slot = prefer if prefer in self._free else self._free[-1]
                self._free.remove(slot)
                return self._take(slot)
            if self._created < self.capacity:
                wait_s = self._retry_at - time.monotonic()
                if wait_s > 0:
                    raise ProviderError(
                        self.spec.provider, f"{self.start_error or self.last_death}; the next "
                        f"{self.spec.label} worker starts in {wait_s:.1f} s")
                index = self._reserve()
                waiter = None
            elif not wait:
                return None
            else:
                waiter = _Waiter(loop, loop.create_future())
                self._waiters.append(waiter)
        if waiter is not None:
            return await self._wait(waiter)
        task = asyncio.ensure_future(asyncio.to_thread(self._start, index))
        try:
            slot = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._adopt)  # the start finishes anyway: keep its worker
            raise
        except Exception as exc:
            self._start_failed(exc)
            raise
        with self._lock:
            return self._take(slot)

    def _reserve(self) -> int:
        self._created += 1
        self._index += 1
        return self._index - 1

    async def _wait(self, waiter: _Waiter) -> Slot:
        try:
            return await waiter.future
        except asyncio.CancelledError:
            with self._lock:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            f = waiter.future
            if f.done() and not f.cancelled() and f.exception() is None:
                self.release(f.result())  # handed over just as we were cancelled
            raise

    def release(self, slot: Slot) -> None:
        """Return a worker; callable from any thread. A dead one is dropped (its replacement
        is already on the way, see `_died`)."""
        with self._lock:
            self.in_use -= 1
            if not slot.worker.alive or self._closed:
                return
            while self._waiters:
                waiter = self._waiters.popleft()
                if waiter.future.done():
                    continue
                self.in_use += 1
                with contextlib.suppress(RuntimeError):  # that loop is closed: try the next
                    waiter.loop.call_soon_threadsafe(self._hand, waiter, slot)
                    return
                self.in_use -= 1
            self._free.append(slot)

    def _hand(self, waiter: _Waiter, slot: Slot) -> None:
        if waiter.future.done():  # cancelled meanwhile: give the worker to someone else
            self.release(slot)
        else:
            waiter.future.set_result(slot)

    def _adopt(self, task: asyncio.Future[Slot]) -> None:
        if task.cancelled() or task.exception() is not None:
            self._start_failed(task.exception() or RuntimeError("start cancelled"))
            return
        with self._lock:
            self.in_use += 1
        self.release(task.result())

    def _start_failed(self, exc: BaseException) -> None:
        # Whoever waits for a worker would hit the same error: tell them now.
        with self._lock:
            self._created -= 1
            self._failures += 1
            self.start_error = str(getattr(exc, "message", exc))
            self._retry_at = time.monotonic() + backoff_s(self._failures)
            waiters, self._waiters = list(self._waiters), deque()
        if isinstance(exc, WorkerStopped):  # shutdown: nothing went wrong
            log.debug("%s worker stopped while starting", self.spec.label)
        else:
            log.error("%s worker for %s could not start: %s", self.spec.label,
                      Path(self.spec.model_path).name, exc)
        for w in waiters:
            with contextlib.suppress(RuntimeError):
                w.loop.call_soon_threadsafe(_fail_future, w.future, exc)

    def _start(self, index: int) -> Slot:
        spec = self.spec
        if not Path(spec.model_path).is_file():
            raise ProviderError(spec.provider, f"model file not found: {spec.model_path} "
                                "(run `phonebooth models fetch`)")
        ref = weakref.ref(self)

        def on_death(worker: NativeWorker) -> None:
            pool = ref()
            if pool is not None:
                pool._died(worker)

        worker = NativeWorker(spec, on_death=on_death)
        with self._lock:
            if self._closed:
                raise ProviderError(self.spec.provider, f"the {self.spec.label} pool is shut down")
            self._workers.add(worker)
        try:
            info = worker.start()
        except BaseException:
            with self._lock:
                self._workers.discard(worker)
            raise
        with self._lock:
            self.start_error = None
            closed = self._closed
        if closed:  # shut down while it loaded
            worker.kill()
            raise ProviderError(self.spec.provider, f"the {self.spec.label} pool is shut down")
        log.info("%s worker %d (pid %s) loaded %s (%s)", spec.label, index, worker.pid,
                 Path(spec.model_path).name, info)
        return Slot(worker, index)

    # -- supervision ----------------------------------------------------------------------------

    def _died(self, worker: NativeWorker) -> None:
        """A worker's pipe broke (from its reader thread): forget it and start a replacement,
        after a backoff when workers keep dying young."""
        with self._lock:
            self._workers.discard(worker)
            if self._closed:
                return
            self._created -= 1
            self._free = [s for s in self._free if s.worker is not worker]
            self.last_death = worker.death
            young = time.monotonic() - worker.started_at < STABLE_S
            self._failures = self._failures + 1 if young else 1
            delay = backoff_s(self._failures)
            self._retry_at = time.monotonic() + delay
        self._schedule_restart(delay)

    def _schedule_restart(self, delay: float) -> None:
        timer = threading.Timer(delay, self._restart)
        timer.daemon = True
        with self._lock:
            if self._closed:
                return
            if self._timer is not None:
                self._timer.cancel()
            self._timer = timer
        timer.start()

    def _restart(self) -> None:
        with self._lock:
            self._timer = None
            if self._closed or self._created >= self.capacity:
                return
            index = self._reserve()
        try:
            slot = self._start(index)
        except Exception as exc:
            self._start_failed(exc)
            with self._lock:
                delay = max(0.0, self._retry_at - time.monotonic())
            self._schedule_restart(delay)
            return
        with self._lock:
            self.restarts += 1
            self.in_use += 1
        self.release(slot)

    def close(self) -> None:
        """Stop every worker (server shutdown); waiting requests fail."""
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
            waiters, self._waiters = list(self._waiters), deque()
            workers = list(self._workers)
            self._free.clear()
        if timer is not None:
            timer.cancel()
        exc = ProviderError(self.spec.provider, f"the {self.spec.label} pool is shut down")
        for w in waiters:
            with contextlib.suppress(RuntimeError):
                w.loop.call_soon_threadsafe(_fail_future, w.future, exc)
        _kill_all(workers)


def _kill_all(workers: Any) -> None:
    for worker in list(workers):
        worker.kill()


def _fail_future(future: asyncio.Future[Slot], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def pool_for(shared: dict[str, Any], spec: WorkerSpec, capacity: int) -> NativePool:
    """The process's pool for `spec` (created on first use), raised to at least `capacity`."""
    pools: dict[WorkerSpec, NativePool] = shared.setdefault(SHARED_KEY, {})
    pool = pools.get(spec)
    if pool is None:
        pool = pools.setdefault(spec, NativePool(spec, capacity))
    pool.grow(capacity)
    return pool


def pools(shared: dict[str, Any], provider: str | None = None) -> list[NativePool]:
    """The process's pools (of one provider's engine, if named)."""
    return [p for p in shared.get(SHARED_KEY, {}).values()
            if provider is None or p.spec.provider == provider]


def pools_problem(shared: dict[str, Any]) -> str | None:
    """What keeps the process's native worker pools from serving, or None (for /readyz)."""
    problems = [p for p in (pool.problem() for pool in pools(shared)) if p]
    return "; ".join(problems) if problems else None


def close_pools(shared: dict[str, Any]) -> None:
    for pool in pools(shared):
        pool.close()
    shared.pop(SHARED_KEY, None)
