"""The in-process event bus: ordering, fan-out, replay and dropping slow consumers."""

from __future__ import annotations

import asyncio

import pytest

from app.events.bus import DROP_SLOW_CONSUMER, EventBus, SubscriptionClosed
from pipelines import events as ev


def _speech(sid: str, n: int) -> list[ev.Event]:
    return [ev.UserTranscription(session_id=sid, text=f"word {i}") for i in range(n)]


async def test_sequence_numbers_are_per_session_and_contiguous() -> None:
    bus = EventBus()
    envs = [bus.publish(e) for pair in zip(_speech("a", 5), _speech("b", 5), strict=True)
            for e in pair]
    assert [e.seq for e in envs if e.session_id == "a"] == [1, 2, 3, 4, 5]
    assert [e.seq for e in envs if e.session_id == "b"] == [1, 2, 3, 4, 5]
    assert len({e.id for e in envs}) == 10
    d = envs[0].to_dict()
    assert d["type"] == "user.transcription" and d["seq"] == 1 and d["session_id"] == "a"
    assert d["data"] == {"text": "word 0", "is_final": False, "confidence": 1.0}
    assert bus.last_seq("a") == 5 and bus.published_total == 10


async def test_session_and_global_subscribers_see_their_events_in_order() -> None:
    bus = EventBus()
    sub_a = bus.subscribe("a")
    everyone = bus.subscribe()
    for e in _speech("a", 3) + _speech("b", 2):
        bus.publish(e)
    got_a = [await sub_a.get() for _ in range(3)]
    assert [e.event.text for e in got_a] == ["word 0", "word 1", "word 2"]
    assert sub_a.get_nowait() is None
    got_all = [await everyone.get() for _ in range(5)]
    assert [(e.session_id, e.seq) for e in got_all] == [
        ("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2)]


async def test_waiting_subscriber_wakes_on_publish() -> None:
    bus = EventBus()
    sub = bus.subscribe("a")
    waiter = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    bus.publish(ev.UserSpeechStarted(session_id="a"))
    env = await asyncio.wait_for(waiter, 5)
    assert env.type == "user.speech_started"


async def test_slow_consumer_is_dropped_without_blocking_publish() -> None:
    bus = EventBus(queue_size=5)
    slow = bus.subscribe("a")
    fast = bus.subscribe("a", maxsize=1000)
    # Publish synchronously, never yielding: a publish that waited on a consumer would
    # deadlock here, so finishing at all shows publish never blocks.
    for e in _speech("a", 100):
        bus.publish(e)
    assert slow.closed_reason == DROP_SLOW_CONSUMER
    with pytest.raises(SubscriptionClosed) as info:
        await slow.get()
    assert info.value.reason == DROP_SLOW_CONSUMER
    assert bus.dropped_subscribers_total == 1
    assert fast.qsize() == 100 and not fast.closed
    assert bus.subscriber_count() == 1


async def test_replay_since_seq_then_live_without_gap_or_duplicate() -> None:
    bus = EventBus()
    for e in _speech("a", 4):
        bus.publish(e)
    sub = bus.subscribe("a", since_seq=2)
    bus.publish(ev.UserSpeechStopped(session_id="a"))
    seqs = [(await sub.get()).seq for _ in range(3)]
    assert seqs == [3, 4, 5]
    assert sub.get_nowait() is None


async def test_history_is_bounded_and_ended_sessions_are_forgotten() -> None:
    bus = EventBus(history_size=3, retain_ended_sessions=1)
    for e in _speech("a", 10):
        bus.publish(e)
    sub = bus.subscribe("a", since_seq=0)
    assert [(await sub.get()).seq for _ in range(3)] == [8, 9, 10]  # consumer sees the gap
    bus.publish(ev.SessionEnded(session_id="a"))
    assert bus.session_ended("a")
    bus.publish(ev.SessionEnded(session_id="b"))
    assert not bus.session_ended("a") and bus.last_seq("a") == 0  # evicted
    assert bus.session_ended("b")


async def test_broken_sink_does_not_break_publish() -> None:
    bus = EventBus()
    seen: list[int] = []

    def broken(env: object) -> None:
        raise RuntimeError("boom")

    bus.add_sink("broken", broken)
    bus.add_sink("ok", lambda env: seen.append(env.seq))
    bus.publish(ev.UserSpeechStarted(session_id="a"))
    assert seen == [1] and bus.sink_errors_total == 1


async def test_close_ends_subscriptions() -> None:
    bus = EventBus()
    sub = bus.subscribe("a")
    waiter = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    bus.close()
    with pytest.raises(SubscriptionClosed):
        await asyncio.wait_for(waiter, 5)
    assert bus.subscribe("a").closed
