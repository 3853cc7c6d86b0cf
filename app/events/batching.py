"""Taking a sink's queued work in batches: one round trip to the store (SQL) then covers many
events when they arrive in bursts, while a lone event is still handled at once."""

from __future__ import annotations

import asyncio
from typing import TypeVar

T = TypeVar("T")


async def next_batch(queue: asyncio.Queue[T], limit: int) -> list[T]:
    """Wait for one item, then take whatever else is already queued, up to `limit` in all."""
    batch = [await queue.get()]
    while len(batch) < limit:
        try:
            batch.append(queue.get_nowait())
        except asyncio.QueueEmpty:
            break
    return batch
