"""Agent event webhooks: which events go where, recorded as `webhook_deliveries` rows.

An agent's config names `webhook_url` and optionally `webhook_events` (exact types, `prefix.*`
or `*`; empty means all). Events reach `WebhookSink` through the outbox (app.outbox), like the
SQL sink: each matching event becomes a pending delivery row whose `event_id` is the event's id
(unique, so a replayed event is recorded once) — the idempotency key receivers see on every
retry. Sending is the
job of `app.events.webhook_delivery.WebhookDeliverer`, which works from those rows only, so a
restart (or another replica) picks up whatever was not yet delivered.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Agent, AgentVersion, Session, WebhookDelivery, new_id, utcnow
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

    def may_want(self, session_id: str, event_type: str) -> bool:
        """False only when this session is known to have no webhook for this event type."""
        if session_id not in self._cache:
            return True
        target = self._cache[session_id]
        return target is not None and target.wants(event_type)

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
    """Records one pending delivery per (event, matching agent webhook), inside the outbox
    replayer's transaction (so a delivery survives an outage and a restart like any record)."""

    def __init__(
        self,
        targets: WebhookTargets,
        *,
        on_recorded: Callable[[], None] = lambda: None,
    ) -> None:
        self.targets = targets
        self._on_recorded = on_recorded
        # Per-session strictly increasing created_at: the deliverer orders a session's
        # deliveries by it, so equal timestamps must never happen.
        self._last_created: collections.OrderedDict[str, datetime] = collections.OrderedDict()
        self._added = 0
        self.recorded_total = 0

    async def apply(self, db: AsyncSession, env: Envelope) -> None:
        if await self._add(db, env):
            self._added += 1

    def committed(self) -> None:
        n, self._added = self._added, 0
        if n:
            self.recorded_total += n
            self._on_recorded()

    def discarded(self) -> None:
        self._added = 0

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
