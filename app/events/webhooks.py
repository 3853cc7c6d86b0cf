"""Agent event webhooks: which events go where, recorded as `webhook_deliveries` rows.

An agent's config names `webhook_url` and optionally `webhook_events` (exact types, `prefix.*`
or `*`; empty means all). `WebhookSink` is a bus sink: it enqueues envelopes (bounded, never
blocking the call) and a writer task turns each matching event into a pending delivery row whose
`event_id` is the event's id — the idempotency key receivers see on every retry. Sending is the
job of `app.events.webhook_delivery.WebhookDeliverer`, which works from those rows only, so a
restart (or another replica) picks up whatever was not yet delivered.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Agent, AgentVersion, Session, WebhookDelivery, new_id, utcnow
from app.events.batching import next_batch
from app.events.bus import Envelope

log = logging.getLogger(__name__)


def event_matches(event_type: str, patterns: Iterable[str]) -> bool:
    """Empty filter = everything; `tool.*` = a prefix; `*` = everything."""
    patterns = list(patterns)
    if not patterns:
        return True
    for p in patterns:
        if p == "*" or p == event_type:
            return True
        if p.endswith(".*") and event_type.startswith(p[:-1]):
            return True
    return False


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    url: str
    events: tuple[str, ...] = ()

    def wants(self, event_type: str) -> bool:
        return event_matches(event_type, self.events)


class WebhookTargets:
    """session_id → the agent's webhook target (or None), cached per session.

    The host registers a call's target when it starts (no query needed); otherwise the target is
    looked up from the agent version the session pinned. Only answers backed by an existing
    session row are cached, so an event racing the row's creation is resolved again next time.
    """

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], max_cached: int = 10_000):
        self._sm = sessionmaker
        self._cache: collections.OrderedDict[str, WebhookTarget | None] = collections.OrderedDict()
        self._max = max_cached

    def register(self, session_id: str, url: str | None, events: Iterable[str] = ()) -> None:
        self._put(session_id, WebhookTarget(url, tuple(events)) if url else None)

    def forget(self, session_id: str) -> None:
        self._cache.pop(session_id, None)

    async def resolve(self, db: AsyncSession, session_id: str) -> WebhookTarget | None:
        if session_id in self._cache:
            self._cache.move_to_end(session_id)
            return self._cache[session_id]
        row = (await db.execute(
            select(Session.agent_id, Session.agent_version).where(Session.id == session_id)
        )).first()
        if row is None:
            return None
        agent_id, version = row
        target: WebhookTarget | None = None
        if agent_id:
            if version is None:
                version = (await db.execute(
                    select(Agent.current_version).where(Agent.id == agent_id)
                )).scalar()
            config = (await db.execute(
                select(AgentVersion.config)
                .where(AgentVersion.agent_id == agent_id, AgentVersion.version == version)
            )).scalar()
            if isinstance(config, dict) and config.get("webhook_url"):
                target = WebhookTarget(
                    str(config["webhook_url"]), tuple(config.get("webhook_events") or ())
                )
        self._put(session_id, target)
        return target

    def _put(self, session_id: str, target: WebhookTarget | None) -> None:
        self._cache[session_id] = target
        self._cache.move_to_end(session_id)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)


class WebhookSink:
    """Bus sink that records one pending delivery per (event, matching agent webhook)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        targets: WebhookTargets,
        *,
        on_recorded: Callable[[], None] = lambda: None,
        queue_size: int = 10_000,
        batch_size: int = 256,
    ) -> None:
        self._sm = sessionmaker
        self.targets = targets
        self._on_recorded = on_recorded
        self._queue: asyncio.Queue[Envelope | asyncio.Future[None]] = asyncio.Queue(queue_size)
        self._batch_size = batch_size
        self._task: asyncio.Task[None] | None = None
        # Per-session strictly increasing created_at: the deliverer orders a session's
        # deliveries by it, so equal timestamps must never happen.
        self._last_created: collections.OrderedDict[str, datetime] = collections.OrderedDict()
        self.dropped_total = 0
        self.errors_total = 0
        self.recorded_total = 0

    def __call__(self, env: Envelope) -> None:
        try:
            self._queue.put_nowait(env)
        except asyncio.QueueFull:
            self.dropped_total += 1
            if self.dropped_total == 1 or self.dropped_total % 1000 == 0:
                log.error("webhook sink queue full: %d events dropped so far",
                          self.dropped_total)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="webhook-event-sink")

    async def flush(self) -> None:
        """Return once every event enqueued before this call has been recorded."""
        if self._task is None:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put(fut)
        await fut

    async def stop(self, grace_s: float = 10.0) -> None:
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self.flush(), grace_s)
        except TimeoutError:
            log.error("webhook sink did not flush within %.1fs", grace_s)
        task, self._task = self._task, None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        while True:
            batch = await next_batch(self._queue, self._batch_size)
            envs = [b for b in batch if isinstance(b, Envelope)]
            if envs:
                await self._record(envs)
            for b in batch:
                if isinstance(b, asyncio.Future) and not b.done():
                    b.set_result(None)

    async def _record(self, envs: list[Envelope]) -> None:
        try:
            async with self._sm() as db, db.begin():
                added = [await self._add(db, env) for env in envs]
        except Exception:
            log.warning("webhook batch failed; retrying one by one", exc_info=True)
            added = []
            for env in envs:
                try:
                    async with self._sm() as db, db.begin():
                        added.append(await self._add(db, env))
                except Exception:
                    self.errors_total += 1
                    log.exception("could not record webhook for %s", env.type)
        n = sum(added)
        if n:
            self.recorded_total += n
            self._on_recorded()

    async def _add(self, db: AsyncSession, env: Envelope) -> bool:
        if not env.session_id:
            return False
        target = await self.targets.resolve(db, env.session_id)
        if target is None or not target.wants(env.type):
            return False
        exists = (await db.execute(
            select(WebhookDelivery.id).where(WebhookDelivery.event_id == env.id)
        )).first()
        if exists:
            return False
        created = self._next_created(env.session_id)
        db.add(WebhookDelivery(
            id=new_id(),
            event_id=env.id,
            session_id=env.session_id,
            event_type=env.type,
            url=target.url,
            payload=env.to_dict(),
            status="pending",
            attempts=0,
            next_attempt_at=created,
            created_at=created,
        ))
        await db.flush()
        if env.type == "session.ended":
            self.targets.forget(env.session_id)
            self._last_created.pop(env.session_id, None)
        return True

    def _next_created(self, session_id: str) -> datetime:
        now = utcnow()
        last = self._last_created.get(session_id)
        if last is not None and now <= last:
            now = last + timedelta(microseconds=1)
        self._last_created[session_id] = now
        self._last_created.move_to_end(session_id)
        while len(self._last_created) > 10_000:
            self._last_created.popitem(last=False)
        return now
