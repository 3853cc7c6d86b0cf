"""The bus's stop ends its tasks even when a client library swallows a cancellation.

The Redis client can turn a cancellation that lands inside a command into a connection error;
the bus's retry loops catch that and go on, and a stop that cancelled once then waited for ever
(seen as a 15 s shutdown hang right after a Redis restart)."""

from __future__ import annotations

import asyncio

from redis.exceptions import ConnectionError as RedisConnectionError

from app.bus.redis_bus import _cancel_all


async def test_stop_cancels_again_a_task_that_swallowed_the_cancel() -> None:
    beats = 0

    async def heartbeat() -> None:
        nonlocal beats
        in_command = True  # the first cancel lands inside a command
        while True:
            try:
                if in_command:
                    try:
                        await asyncio.sleep(1.0)
                    except asyncio.CancelledError:
                        in_command = False
                        raise RedisConnectionError("connection reset") from None  # as the client
            except RedisConnectionError:
                beats += 1  # the retry loop carries on
            await asyncio.sleep(0.05)

    task = asyncio.create_task(heartbeat(), name="bus-heartbeat")
    await asyncio.sleep(0.01)
    await asyncio.wait_for(_cancel_all([task]), 3)
    assert task.done() and task.cancelled()
    assert beats == 1  # the first cancel was swallowed; the second one ended it
