"""A bounded pool of llama.cpp contexts for one GGUF model, shared by every call in the process.

A `Llama` object owns one context (KV cache) and is not safe for two generations at once, so
concurrent generations need one context each. The pool holds up to `capacity` of them (that is
the process-wide bound on concurrent generations for the model); the weights are memory-mapped,
so extra contexts cost their KV cache, not another copy of the model. A call asks for the context
it used last: llama.cpp then reuses the common prompt prefix (system prompt and history) instead
of evaluating it again.

Waiting is async and loop-agnostic (a context may be released by a generation thread and handed
to a waiter on any event loop); loading happens on a worker thread, one load at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from providers.base import ProviderError

log = logging.getLogger(__name__)

NAME = "llama_cpp"
# Llama(verbose=False) silences llama.cpp by swapping the process's stdout/stderr file
# descriptors during the load; two loads at once would restore them in the wrong order.
_load_lock = threading.Lock()


@dataclass(eq=False)
class Slot:
    llama: Any  # llama_cpp.Llama
    index: int


@dataclass(frozen=True)
class ModelSpec:
    path: str
    n_ctx: int
    n_threads: int
    n_batch: int


@dataclass(eq=False)
class _Waiter:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Slot] = field(repr=False)


class LlamaPool:
    def __init__(self, spec: ModelSpec, capacity: int) -> None:
        self.spec = spec
        self.capacity = capacity
        self._lock = threading.Lock()
        self._free: list[Slot] = []
        self._created = 0
        self._waiters: deque[_Waiter] = deque()
        self.in_use = 0  # observable for tests and metrics
        self.peak_in_use = 0

    def grow(self, capacity: int) -> None:
        """Raise the bound (a later agent config asked for more); never shrinks live contexts."""
        with self._lock:
            self.capacity = max(self.capacity, capacity)

    def _take(self, slot: Slot) -> Slot:
        self.in_use += 1
        self.peak_in_use = max(self.peak_in_use, self.in_use)
        return slot

    @overload
    async def acquire(self, prefer: Slot | None = None) -> Slot: ...
    @overload
    async def acquire(self, prefer: Slot | None = None, *, wait: bool) -> Slot | None: ...

    async def acquire(self, prefer: Slot | None = None, *, wait: bool = True) -> Slot | None:
        """A context: `prefer` if it is free, else another free one, else a newly loaded one
        while under capacity, else the next one released. With `wait=False`, None instead of
        waiting for a release (work that must never delay a generation, e.g. a prefill)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._free:
                slot = prefer if prefer in self._free else self._free[-1]
                self._free.remove(slot)
                return self._take(slot)
            if self._created < self.capacity:
                self._created += 1
                index = self._created - 1
                waiter = None
            elif not wait:
                return None
            else:
                waiter = _Waiter(loop, loop.create_future())
                self._waiters.append(waiter)
        if waiter is not None:
            return await self._wait(waiter)
        task = asyncio.ensure_future(asyncio.to_thread(self._load, index))
        try:
            slot = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._adopt)  # the load finishes anyway: keep its context
            raise
        except Exception as exc:
            self._load_failed(exc)
            raise
        with self._lock:
            return self._take(slot)

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
        """Return a context; callable from any thread."""
        with self._lock:
            self.in_use -= 1
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
        if waiter.future.done():  # cancelled meanwhile: give the context to someone else
            self.release(slot)
        else:
            waiter.future.set_result(slot)

    def _adopt(self, task: asyncio.Future[Slot]) -> None:
        if task.cancelled() or task.exception() is not None:
            self._load_failed(task.exception() or RuntimeError("load cancelled"))
            return
        with self._lock:
            self.in_use += 1
        self.release(task.result())

    def _load_failed(self, exc: BaseException) -> None:
        # Whoever waits for a context would hit the same error: tell them now.
        with self._lock:
            self._created -= 1
            waiters, self._waiters = list(self._waiters), deque()
        for w in waiters:
            with contextlib.suppress(RuntimeError):
                w.loop.call_soon_threadsafe(_fail_future, w.future, exc)

    def _load(self, index: int) -> Slot:
        spec = self.spec
        if not Path(spec.path).is_file():
            raise ProviderError(NAME, f"model file not found: {spec.path} "
                                "(run `phonebooth models fetch`)")
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ProviderError(NAME, "llama-cpp-python is not installed "
                                "(pip install 'phonebooth[local]')") from exc
        with _load_lock:
            try:
                llama = Llama(model_path=spec.path, n_ctx=spec.n_ctx, n_threads=spec.n_threads,
                              n_threads_batch=spec.n_threads, n_batch=spec.n_batch,
                              use_mmap=True, verbose=False)
            except Exception as exc:
                raise ProviderError(NAME, f"could not load {Path(spec.path).name}: {exc}") \
                    from exc
        log.info("loaded %s context %d (n_ctx=%d, threads=%d)", Path(spec.path).name, index,
                 spec.n_ctx, spec.n_threads)
        return Slot(llama, index)


def _fail_future(future: asyncio.Future[Slot], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
