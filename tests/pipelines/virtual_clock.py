"""An asyncio event loop with virtual time, for deterministic conversation tests.

`loop.time()` only advances when every task is waiting: the loop then jumps straight to the next
timer instead of sleeping. A test of a 30 s call with 20 ms frames finishes in well under a
second, independent of machine load, and every timing it observes is exact and repeatable.

Only for code that is pure asyncio (the fakes here). Work in threads would race virtual time.

    def test_x():
        run_virtual(scenario())   # a plain (sync) test; scenario is a coroutine
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_REAL_WAIT_LIMIT_S = 10.0  # nothing scheduled and no I/O for this long (real time): a deadlock


class _VirtualSelector(selectors.DefaultSelector):
    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._vloop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            # No timers at all: only I/O (e.g. call_soon_threadsafe) can wake us.
            ready = super().select(_REAL_WAIT_LIMIT_S)
            if not ready:
                raise RuntimeError("virtual-time loop: nothing scheduled, test deadlocked")
            return ready
        self._vloop._now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(selector=_VirtualSelector(self))

    def time(self) -> float:
        return self._now


def run_virtual(coro: Coroutine[Any, Any, T], *, timeout: float = 3600.0) -> T:
    """Run `coro` to completion on a fresh virtual-time loop (`timeout` is virtual seconds)."""

    async def guarded() -> T:
        return await asyncio.wait_for(coro, timeout)

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(guarded())
