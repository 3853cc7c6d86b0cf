"""In-process event bus: the one place a call's events fan out to sinks and subscribers.

`publish()` is synchronous and never waits: it stamps the event with a per-session sequence number
and an id, hands it to each sink (sinks only enqueue), and offers it to each subscriber's bounded
queue. A subscriber whose queue is full is dropped (closed with a reason) instead of being waited
for, so a stuck WebSocket client can never slow a call. Must be called from the event-loop thread;
`publish_threadsafe` exists for the rare producer on another thread.

Each session keeps a short history so a subscriber that connects mid-call can replay what it
missed; the history and sequence counters are bounded (ring buffers, LRU over sessions).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipelines.events import Event

log = logging.getLogger(__name__)

DROP_SLOW_CONSUMER = "slow consumer"
CLOSE_SHUTDOWN = "server shutting down"


def new_event_id() -> str:
    return "evt_" + uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Envelope:
    """An event as published: the typed event plus its stable id and per-session sequence."""

    id: str
    seq: int
    event: Event

    @property
    def type(self) -> str:
        return self.event.type

    @property
    def session_id(self) -> str:
        return self.event.session_id

    def to_dict(self) -> dict[str, Any]:
        """The wire shape shared by WebSocket frames and webhook bodies."""
        return {
            "id": self.id,
            "type": self.event.type,
            "session_id": self.event.session_id,
            "seq": self.seq,
            "ts": self.event.ts,
            "data": self.event.payload(),
        }


class SubscriptionClosed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Subscription:
    """A bounded queue of envelopes for one consumer (one session, or all sessions)."""

    def __init__(self, bus: EventBus, session_id: str | None, maxsize: int) -> None:
        self.session_id = session_id
        self.maxsize = maxsize
        self._bus = bus
        self._queue: collections.deque[Envelope] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self.closed_reason: str | None = None

    @property
    def closed(self) -> bool:
        return self.closed_reason is not None

    def qsize(self) -> int:
        return len(self._queue)

    def _offer(self, env: Envelope) -> bool:
        """Queue without waiting; False (and closed) when the consumer has fallen behind."""
        if self.closed_reason is not None:
            return False
        if len(self._queue) >= self.maxsize:
            self._close(DROP_SLOW_CONSUMER)
            return False
        self._queue.append(env)
        self._wake()
        return True

    def _close(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
            # A dropped consumer has a gap in its stream; what is queued is no longer useful.
            self._queue.clear()
            self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def close(self, reason: str = "closed") -> None:
        """Stop receiving events (idempotent)."""
        self._close(reason)
        self._bus._unsubscribe(self)

    async def get(self) -> Envelope:
        """Next envelope; raises SubscriptionClosed once closed."""
        while True:
            if self.closed_reason is not None:
                raise SubscriptionClosed(self.closed_reason)
            if self._queue:
                return self._queue.popleft()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def get_nowait(self) -> Envelope | None:
        if self.closed_reason is not None:
            raise SubscriptionClosed(self.closed_reason)
        return self._queue.popleft() if self._queue else None

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Envelope:
        try:
            return await self.get()
        except SubscriptionClosed:
            raise StopAsyncIteration from None


class _SessionLog:
    __slots__ = ("ended", "history", "seq")

    def __init__(self, history_size: int) -> None:
        self.seq = 0
        self.history: collections.deque[Envelope] = collections.deque(maxlen=history_size)
        self.ended = False


Sink = Callable[[Envelope], None]


class EventBus:
    """Fan-out of published events. Counters are plain attributes for /metrics."""

    def __init__(
        self,
        queue_size: int = 1000,
        *,
        history_size: int = 256,
        max_tracked_sessions: int = 10_000,
        retain_ended_sessions: int = 64,
    ) -> None:
        self.queue_size = queue_size
        self.history_size = history_size
        self.max_tracked_sessions = max_tracked_sessions
        self.retain_ended_sessions = retain_ended_sessions
        self._sessions: collections.OrderedDict[str, _SessionLog] = collections.OrderedDict()
        self._ended: collections.deque[str] = collections.deque()
        self._by_session: dict[str, set[Subscription]] = {}
        self._global: set[Subscription] = set()
        self._sinks: list[tuple[str, Sink]] = []
        self._closed = False
        # Exported by the metrics module.
        self.published_total = 0
        self.dropped_subscribers_total = 0
        self.sink_errors_total = 0

    # -- producers ---------------------------------------------------------------------------
    def publish(self, event: Event) -> Envelope:
        """Stamp and fan out one event. Never blocks, never raises on a sink's behalf."""
        sid = event.session_id
        slog = self._session_log(sid)
        slog.seq += 1
        env = Envelope(id=new_event_id(), seq=slog.seq, event=event)
        self.published_total += 1

        for name, sink in self._sinks:
            try:
                sink(env)
            except Exception:  # a broken sink must not break the call that published
                self.sink_errors_total += 1
                log.exception("event sink %s failed on %s", name, event.type)

        self._fan_out(slog, env)
        return env

    def deliver(self, env: Envelope) -> None:
        """An envelope another process published (its id and seq kept): to this process's
        subscribers and history only — the publishing process feeds the sinks."""
        slog = self._session_log(env.session_id)
        slog.seq = max(slog.seq, env.seq)
        self._fan_out(slog, env)

    def _fan_out(self, slog: _SessionLog, env: Envelope) -> None:
        slog.history.append(env)
        for sub in list(self._by_session.get(env.session_id, ())):
            if not sub._offer(env):
                self._drop(sub)
        for sub in list(self._global):
            if not sub._offer(env):
                self._drop(sub)
        if env.type == "session.ended":
            self._mark_ended(env.session_id, slog)

    def publish_threadsafe(self, loop: asyncio.AbstractEventLoop, event: Event) -> None:
        loop.call_soon_threadsafe(self.publish, event)

    def __call__(self, event: Event) -> None:
        """So the bus itself can be handed to the engine as its event callback."""
        self.publish(event)

    # -- consumers ---------------------------------------------------------------------------
    def add_sink(self, name: str, sink: Sink) -> None:
        """A sink sees every envelope synchronously; it must only enqueue (never block)."""
        self._sinks.append((name, sink))

    def remove_sink(self, name: str) -> None:
        self._sinks = [(n, s) for n, s in self._sinks if n != name]

    def subscribe(
        self,
        session_id: str | None = None,
        *,
        since_seq: int | None = None,
        maxsize: int | None = None,
    ) -> Subscription:
        """Subscribe to one session (or all when None).

        With `since_seq`, buffered events of that session with seq > since_seq are queued first;
        replay and registration happen in one synchronous step, so nothing is missed or doubled.
        """
        sub = Subscription(self, session_id, maxsize or self.queue_size)
        if self._closed:
            sub._close(CLOSE_SHUTDOWN)
            return sub
        if session_id is not None and since_seq is not None:
            slog = self._sessions.get(session_id)
            if slog is not None:
                for env in slog.history:
                    if env.seq > since_seq and not sub._offer(env):
                        return sub  # history alone overflows this queue: closed, never registered
        if session_id is None:
            self._global.add(sub)
        else:
            self._by_session.setdefault(session_id, set()).add(sub)
        return sub

    def last_seq(self, session_id: str) -> int:
        slog = self._sessions.get(session_id)
        return slog.seq if slog else 0

    def session_ended(self, session_id: str) -> bool:
        """True when this bus saw the session's `session.ended` (and still remembers it)."""
        slog = self._sessions.get(session_id)
        return bool(slog and slog.ended)

    def subscriber_count(self) -> int:
        return len(self._global) + sum(len(s) for s in self._by_session.values())

    def close(self, reason: str = CLOSE_SHUTDOWN) -> None:
        """Close every subscription (on shutdown); later subscriptions start closed."""
        self._closed = True
        for sub in list(self._global):
            sub.close(reason)
        for subs in list(self._by_session.values()):
            for sub in list(subs):
                sub.close(reason)

    # -- internals ---------------------------------------------------------------------------
    def _session_log(self, sid: str) -> _SessionLog:
        slog = self._sessions.get(sid)
        if slog is None:
            slog = self._sessions[sid] = _SessionLog(self.history_size)
            # Bound memory even if some producer never ends its sessions.
            while len(self._sessions) > self.max_tracked_sessions:
                self._sessions.popitem(last=False)
        else:
            self._sessions.move_to_end(sid)
        return slog

    def _mark_ended(self, sid: str, slog: _SessionLog) -> None:
        if slog.ended:
            return
        slog.ended = True
        self._ended.append(sid)
        while len(self._ended) > self.retain_ended_sessions:
            old = self._ended.popleft()
            old_log = self._sessions.get(old)
            if old_log is not None and old_log.ended:
                del self._sessions[old]

    def _drop(self, sub: Subscription) -> None:
        if self._remove(sub) and sub.closed_reason == DROP_SLOW_CONSUMER:
            self.dropped_subscribers_total += 1
            log.warning(
                "dropped slow event subscriber (session=%s, queue=%d)",
                sub.session_id or "*", sub.maxsize,
            )

    def _unsubscribe(self, sub: Subscription) -> None:
        self._remove(sub)

    def _remove(self, sub: Subscription) -> bool:
        if sub.session_id is None:
            if sub in self._global:
                self._global.discard(sub)
                return True
            return False
        subs = self._by_session.get(sub.session_id)
        if subs is None or sub not in subs:
            return False
        subs.discard(sub)
        if not subs:
            del self._by_session[sub.session_id]
        return True
