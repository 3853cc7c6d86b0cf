"""The event plumbing of one process: bus + outbox + SQL sink + webhook sink + deliverer.

The app creates one `EventsService` at startup (`await events.start()`), hands
`events.publish` (or `events.bus`) to every call as its event callback, and stops it on shutdown
(`await events.stop()`). Every published event with a session goes into the outbox (a durable
local queue, app.outbox) and from there, in order, to the SQL sink and the webhook sink inside
one transaction per batch; an outage of the database delays the records, never loses them.
Counters for /metrics are in `counters()`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import EventsSettings, OutboxSettings
from app.events.bus import Envelope, EventBus
from app.events.sql_sink import SQL_EVENT_TYPES, SqlSink
from app.events.webhook_delivery import WebhookDeliverer
from app.events.webhooks import WebhookSink, WebhookTargets
from app.outbox.service import Outbox
from app.outbox.sessions import KINDS as SESSION_KINDS
from app.outbox.sessions import SessionRecords
from app.outbox.store import Record
from pipelines.events import REGISTRY, Event

EVENT_RECORD = "event"


@dataclasses.dataclass(kw_only=True)
class _ReplayedEvent:
    """An event read back from the outbox whose type this build does not know: its payload
    is kept as it was (webhooks still get it)."""

    type: str
    session_id: str
    ts: float
    data: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        return self.data


def restore_envelope(d: dict[str, Any]) -> Envelope:
    """The envelope `Envelope.to_dict()` described (same id, seq and payload)."""
    data = dict(d.get("data") or {})
    cls = REGISTRY.get(str(d.get("type")))
    event: Any
    if cls is not None:
        names = {f.name for f in dataclasses.fields(cls)} - {"session_id", "ts", "mono"}
        if set(data) <= names:
            event = cls(session_id=str(d["session_id"]), ts=float(d["ts"]), **data)
            return Envelope(id=str(d["id"]), seq=int(d["seq"]), event=event)
    event = _ReplayedEvent(type=str(d.get("type")), session_id=str(d["session_id"]),
                           ts=float(d["ts"]), data=data)
    return Envelope(id=str(d["id"]), seq=int(d["seq"]), event=event)


class _EventRecords:
    """The outbox applier for events: the SQL rows and webhook deliveries they stand for."""

    def __init__(self, sql: SqlSink, webhooks: WebhookSink) -> None:
        self.sql = sql
        self.webhooks = webhooks

    async def apply(self, db: AsyncSession, record: Record, body: Any) -> None:
        env = restore_envelope(body)
        await self.sql.apply(db, env)
        await self.webhooks.apply(db, env)

    def committed(self) -> None:
        self.sql.committed()
        self.webhooks.committed()

    def discarded(self) -> None:
        self.sql.discarded()
        self.webhooks.discarded()


class EventsService:
    def __init__(
        self,
        settings: EventsSettings,
        sessionmaker: async_sessionmaker[AsyncSession],
        signing_secret: str,
        *,
        outbox_settings: OutboxSettings | None = None,
        outbox_path: str | Path = ":memory:",
        http_client: httpx.AsyncClient | None = None,
        poll_interval_s: float = 2.0,
    ) -> None:
        self.bus = EventBus(queue_size=settings.ws_queue_size)
        self.outbox = Outbox(outbox_settings or OutboxSettings(), outbox_path, sessionmaker)
        self.sql = SqlSink()
        self.targets = WebhookTargets(sessionmaker)
        self.deliverer = WebhookDeliverer(
            sessionmaker,
            signing_secret,
            timeout_s=settings.webhook_timeout_s,
            max_attempts=settings.webhook_max_attempts,
            backoff_s=settings.webhook_backoff_s,
            poll_interval_s=poll_interval_s,
            client=http_client,
        )
        self.webhooks = WebhookSink(self.targets, on_recorded=self.deliverer.wake)
        self.outbox.register(EVENT_RECORD, _EventRecords(self.sql, self.webhooks))
        sessions = SessionRecords()
        for kind in SESSION_KINDS:
            self.outbox.register(kind, sessions)
        self.bus.add_sink("records", self._record)
        self._started = False

    def _record(self, env: Envelope) -> None:
        sid = env.session_id
        # Only what a sink will write: most of a call's events are for live listeners only.
        if sid and (env.type in SQL_EVENT_TYPES or self.targets.may_want(sid, env.type)):
            self.outbox.put(EVENT_RECORD, sid, env.to_dict())

    def publish(self, event: Event) -> Envelope:
        return self.bus.publish(event)

    async def start(self) -> None:
        if self._started:
            return
        await self.outbox.start()  # first: a failed start leaves nothing half-started
        self._started = True
        self.deliverer.start()

    async def flush(self) -> None:
        """Wait until everything published so far is in the database (deliveries recorded,
        not necessarily sent)."""
        await self.outbox.flush()

    async def stop(self, grace_s: float = 10.0) -> None:
        if not self._started:
            return
        self._started = False
        self.bus.close()
        await self.outbox.stop(grace_s)
        await self.deliverer.stop(min(grace_s, 5.0))

    def counters(self) -> dict[str, Any]:
        """Counters and gauges for the metrics exporter (names are Prometheus-ready)."""
        return {
            "events_published_total": self.bus.published_total,
            "event_subscribers": self.bus.subscriber_count(),
            "event_subscribers_dropped_total": self.bus.dropped_subscribers_total,
            "event_sink_errors_total": self.bus.sink_errors_total,
            "webhook_deliveries_recorded_total": self.webhooks.recorded_total,
            "webhook_deliveries_delivered_total": self.deliverer.delivered_total,
            "webhook_delivery_attempt_failures_total": self.deliverer.attempt_failures_total,
            "webhook_deliveries_failed_total": self.deliverer.failed_total,
            **self.outbox.counters(),
        }
