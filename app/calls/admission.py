"""Admission control and graceful drain for calls in this process.

A call takes a slot when its answer URL is served (or an outbound call is placed) and gives it
back when its stream ends. A slot whose stream never connects expires after
`reserve_timeout_s`, so a call Plivo could not connect does not leak capacity.

At `limits.max_concurrent_calls` the answer URL returns busy XML instead of accepting a call
it cannot serve in real time. Across processes, `seats` (app.bus) keeps the cluster-wide count
and which process hosts each live call; alone, `LocalSeats` keeps nothing. On shutdown
(`drain`) no new call is admitted; live calls may finish on their own until
`limits.drain_timeout_s`, then each is ended politely through its `end` callback (a carrier
REST hangup), and the drain waits briefly for them to go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

EndCallback = Callable[[str], Awaitable[None]]
# While draining, an answered call whose stream has not connected after this long never will.
DRAIN_RESERVATION_S = 5.0


class Seats(Protocol):
    """The calls of every process serving one deployment (see app.bus)."""

    async def take(self, session_id: str, ttl_s: float) -> bool:
        """Reserve a seat for a call this process answers; False when the cluster is full."""
        ...

    def hold(self, session_id: str) -> None:
        """This process hosts the call now (its stream is up here). Never waits."""
        ...

    def free(self, session_id: str) -> None:
        """This process is done with the call. Never waits."""
        ...

    def watch(self, on_taken: Callable[[str], None]) -> None:
        """Call `on_taken(session_id)` when another process takes over a reservation of ours
        (the call's stream connected there)."""
        ...


class LocalSeats:
    """One process is the whole service: its own slots are all there is."""

    async def take(self, session_id: str, ttl_s: float) -> bool:
        return True

    def hold(self, session_id: str) -> None:
        pass

    def free(self, session_id: str) -> None:
        pass

    def watch(self, on_taken: Callable[[str], None]) -> None:
        pass


@dataclass(slots=True)
class _Slot:
    reserved_at: float
    ttl_s: float
    end: EndCallback | None = None  # set once the stream is attached

    @property
    def live(self) -> bool:
        return self.end is not None


class CallAdmission:
    def __init__(self, max_calls: int, *, reserve_timeout_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_expire: Callable[[str], None] | None = None,
                 seats: Seats | None = None) -> None:
        self.max_calls = max_calls
        self.seats: Seats = seats or LocalSeats()
        self.seats.watch(self.forget)
        # Told about each reservation that lapsed (its stream never connected), so the
        # session can be closed instead of staying "ringing" forever.
        self.on_expire = on_expire
        self.reserve_timeout_s = reserve_timeout_s
        self.clock = clock
        self._slots: dict[str, _Slot] = {}
        self._draining = False
        self._empty = asyncio.Event()
        self._empty.set()
        self.rejected = 0

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def in_use(self) -> int:
        self._expire()
        return len(self._slots)

    @property
    def live(self) -> int:
        return sum(1 for s in self._slots.values() if s.live)

    def holds(self, session_id: str) -> bool:
        return session_id in self._slots

    def try_admit(self, session_id: str, ttl_s: float | None = None) -> bool:
        """Reserve a slot for a new call; False when full or draining.

        `ttl_s`: how long the slot waits for the stream (default `reserve_timeout_s`; an
        outbound call that may ring for minutes asks for longer)."""
        if session_id in self._slots:
            return True  # a retried answer request for the same call
        if self._draining or self.in_use >= self.max_calls:
            self.rejected += 1
            return False
        self._slots[session_id] = _Slot(self.clock(), ttl_s or self.reserve_timeout_s)
        self._empty.clear()
        return True

    async def admit(self, session_id: str, ttl_s: float | None = None) -> bool:
        """`try_admit` here, then a seat in the cluster (given back if the cluster is full)."""
        if not self.try_admit(session_id, ttl_s):
            return False
        if await self.seats.take(session_id, ttl_s or self.reserve_timeout_s):
            return True
        self.rejected += 1
        self.release(session_id)
        return False

    def forget(self, session_id: str) -> None:
        """Another process took over this reservation (its stream connected there)."""
        slot = self._slots.get(session_id)
        if slot is not None and not slot.live:
            self._slots.pop(session_id, None)
            if not self._slots:
                self._empty.set()

    def attach(self, session_id: str, end: EndCallback) -> bool:
        """The call's stream is up (allowed while draining: the call was already admitted).
        Re-admits a slot that expired if there is still room."""
        slot = self._slots.get(session_id)
        if slot is None:
            if self._draining or self.in_use >= self.max_calls:
                return False
            slot = self._slots[session_id] = _Slot(self.clock(), self.reserve_timeout_s)
            self._empty.clear()
        slot.end = end
        self.seats.hold(session_id)
        return True

    def release(self, session_id: str) -> None:
        if self._slots.pop(session_id, None) is not None:
            self.seats.free(session_id)
        if not self._slots:
            self._empty.set()

    def drop_reservations(self) -> int:
        """Give up on every admitted call whose stream has not connected; returns how many."""
        stale = [sid for sid, s in self._slots.items() if not s.live]
        for sid in stale:
            self.release(sid)
        return len(stale)

    def _expire(self) -> None:
        now = self.clock()
        stale = [sid for sid, s in self._slots.items() if not s.live and now - s.reserved_at
                 > (min(s.ttl_s, DRAIN_RESERVATION_S) if self._draining else s.ttl_s)]
        for sid in stale:
            log.info("call slot for session %s expired: its stream never connected", sid)
            self.release(sid)
            if self.on_expire is not None:
                self.on_expire(sid)

    async def drain(self, timeout_s: float, *, end_grace_s: float = 5.0) -> int:
        """Stop admitting and wait for live calls; end stragglers. Returns how many were ended.

        Calls answered just before the drain keep their slot: their stream is still allowed to
        connect (within `DRAIN_RESERVATION_S`), and the drain waits for them like any call."""
        self._draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self._expire()
        if self._slots:
            log.info("draining: waiting up to %.0f s for %d call(s)", timeout_s,
                     len(self._slots))
        while self._slots and loop.time() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._empty.wait(), min(0.25, deadline - loop.time()))
            self._expire()
        if not self._slots:
            log.info("draining: no calls left")
            return 0
        self.drop_reservations()  # answered but never streamed: nothing to end
        stragglers = [(sid, s.end) for sid, s in self._slots.items() if s.end is not None]
        log.warning("draining: ending %d call(s) still live after %.0f s", len(stragglers),
                    timeout_s)
        results = await asyncio.gather(*(end("shutdown") for _, end in stragglers),
                                       return_exceptions=True)
        for (sid, _), res in zip(stragglers, results, strict=True):
            if isinstance(res, BaseException):
                log.warning("draining: could not end session %s: %s", sid, res)
        try:
            await asyncio.wait_for(self._empty.wait(), end_grace_s)
        except TimeoutError:
            log.warning("draining: %d call(s) did not end in time", len(self._slots))
        return len(stragglers)
