"""What the Plivo edge needs to answer calls while the database is away.

- `RoutingCache`: number → agent version and agent → current version, loaded at start and
  reloaded every `outbox.routing_refresh_s` while the database answers, at once after an
  outage, and whenever this process commits a change to agents, versions or numbers. The answer
  URL reads the database when it can (and refreshes the entry); the cache is the fallback.
- `AnsweredCalls`: what the answer URL learnt about each call it answered (session row fields and
  agent config), handed in-process to the stream WebSocket so the stream needs no database read
  (and does not race the session record, which may still be in the outbox).

The session records themselves go through the outbox (app.outbox.sessions).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import weakref
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session as OrmSession

from app.db.engine import Database
from app.db.models import Agent, AgentVersion, PhoneNumber

log = logging.getLogger(__name__)

# An answered call whose stream has not come within this long will not (stream tokens expire
# long before); bounds memory if streams never arrive.
ANSWERED_TTL_S = 900.0
MAX_ANSWERED = 10_000


@dataclass(frozen=True, slots=True)
class Route:
    agent_id: str
    version: int
    config: dict[str, Any]


# --- routing ---------------------------------------------------------------------------------
_CACHES: weakref.WeakSet[RoutingCache] = weakref.WeakSet()
_ROUTING_MODELS = (Agent, AgentVersion, PhoneNumber)


@event.listens_for(OrmSession, "after_flush")
def _note_routing_change(session: OrmSession, _ctx: Any) -> None:
    for obj in (*session.new, *session.dirty, *session.deleted):
        if isinstance(obj, _ROUTING_MODELS):
            session.info["routing_changed"] = True
            return


@event.listens_for(OrmSession, "after_commit")
def _invalidate_routing(session: OrmSession) -> None:
    if session.info.pop("routing_changed", False):
        for cache in list(_CACHES):
            cache.invalidate()


class RoutingCache:
    def __init__(self, db: Database, refresh_s: float) -> None:
        self._db = db
        self.refresh_s = refresh_s
        self._numbers: dict[str, Route] = {}
        self._agents: dict[str, Route] = {}
        self._stale = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.loaded_at: float | None = None
        _CACHES.add(self)

    def for_number(self, number: str) -> Route | None:
        return self._numbers.get(number)

    def for_agent(self, agent_id: str) -> Route | None:
        return self._agents.get(agent_id)

    def remember(self, number: str | None, route: Route) -> None:
        """What the database just said (the answer URL read it): keep it for an outage."""
        self._agents[route.agent_id] = route
        if number:
            self._numbers[number] = route

    def invalidate(self) -> None:
        self._stale.set()

    async def load(self) -> None:
        async with self._db.session() as s:
            rows = (await s.execute(
                select(Agent.id, AgentVersion.version, AgentVersion.config)
                .join(AgentVersion, (AgentVersion.agent_id == Agent.id)
                      & (AgentVersion.version == Agent.current_version))
                .where(Agent.deleted_at.is_(None))
            )).all()
            agents = {a: Route(a, int(v), dict(c or {})) for a, v, c in rows}
            numbers = {n: agents[a] for n, a in (await s.execute(
                select(PhoneNumber.number, PhoneNumber.agent_id))).all() if a in agents}
        self._agents, self._numbers = agents, numbers
        self.loaded_at = time.time()

    def start(self, db_up: Any) -> None:
        """Reload in the background; `db_up()` says whether the database is believed up."""
        if self._task is None:
            self._task = asyncio.create_task(self._refresh(db_up), name="routing-cache")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _refresh(self, db_up: Any) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stale.wait(), self.refresh_s)
            self._stale.clear()
            if not db_up():
                continue
            try:
                await self.load()
            except Exception as exc:
                log.warning("could not reload the number → agent table: %s", exc)


# --- answered calls --------------------------------------------------------------------------
@dataclass
class AnsweredCall:
    session_id: str
    row: dict[str, Any]  # the session fields the stream needs (see stream.serve_stream)
    config: dict[str, Any]
    at: float


class AnsweredCalls:
    def __init__(self) -> None:
        self._by_session: collections.OrderedDict[str, AnsweredCall] = collections.OrderedDict()
        self._by_call: dict[str, str] = {}

    def put(self, session_id: str, row: dict[str, Any], config: dict[str, Any]) -> None:
        self._prune()
        self._by_session[session_id] = AnsweredCall(session_id, row, config, time.monotonic())
        if row.get("call_uuid"):
            self._by_call[row["call_uuid"]] = session_id
        while len(self._by_session) > MAX_ANSWERED:
            self._drop(next(iter(self._by_session)))

    def get(self, session_id: str) -> AnsweredCall | None:
        self._prune()
        return self._by_session.get(session_id)

    def by_call_uuid(self, call_uuid: str) -> AnsweredCall | None:
        sid = self._by_call.get(call_uuid)
        return self.get(sid) if sid else None

    def set_status(self, session_id: str, status: str) -> None:
        call = self._by_session.get(session_id)
        if call is not None:
            call.row["status"] = status

    def forget(self, session_id: str) -> None:
        self._drop(session_id)

    def _drop(self, session_id: str) -> None:
        call = self._by_session.pop(session_id, None)
        if call is not None and call.row.get("call_uuid"):
            self._by_call.pop(call.row["call_uuid"], None)

    def _prune(self) -> None:
        limit = time.monotonic() - ANSWERED_TTL_S
        while self._by_session:
            first = next(iter(self._by_session.values()))
            if first.at >= limit:
                break
            self._drop(first.session_id)
