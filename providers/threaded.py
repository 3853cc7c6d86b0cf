"""Run a blocking producer (a local engine's generation loop) on its own thread and consume its
output as an async iterator.

Local engines (llama.cpp, Piper) block for whole tokens or sentences; they must never run on the
event loop. Each request gets a dedicated thread rather than a slot in the shared default
executor, because a generation can last seconds and would starve the short jobs queued there.

Back-pressure: the producer may run at most `max_ahead` items ahead of the consumer (a counting
semaphore the consumer refills), so a stalled consumer never lets a producer buffer a whole
answer. Cancellation: when iteration ends for any reason (the end, an error, aclose, the
consumer's cancellation) the `stop` event is set and `on_cancel` runs, so a producer whose
consumer left can abandon its work at its next check (or have it interrupted by `on_cancel`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

T = TypeVar("T")

# The producer gets `emit(item) -> bool` (False once the consumer has gone: stop producing) and
# the `stop` event to poll between expensive steps.
Producer = Callable[[Callable[[T], bool], threading.Event], None]

_ITEM, _ERROR, _END = 0, 1, 2


async def run_in_thread(
    produce: Producer[T],
    *,
    max_ahead: int = 8,
    on_cancel: Callable[[], None] | None = None,
    thread_name: str = "provider-worker",
) -> AsyncIterator[T]:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    credits = threading.Semaphore(max_ahead)
    stop = threading.Event()

    def post(tag: int, value: Any) -> None:
        # The loop may already be closed when an abandoned producer finishes: nothing to tell.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(inbox.put_nowait, (tag, value))

    def emit(item: T) -> bool:
        while not credits.acquire(timeout=0.05):
            if stop.is_set():
                return False
        if stop.is_set():
            return False
        post(_ITEM, item)
        return True

    def run() -> None:
        try:
            produce(emit, stop)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            post(_ERROR, exc)
        else:
            post(_END, None)

    thread = threading.Thread(target=run, name=thread_name, daemon=True)
    thread.start()
    try:
        while True:
            tag, value = await inbox.get()
            if tag == _ITEM:
                credits.release()
                yield value
            elif tag == _ERROR:
                raise value
            else:
                return
    finally:
        stop.set()
        if on_cancel is not None:
            on_cancel()
