"""The event plumbing of one process: bus + SQL sink + webhook sink + webhook deliverer.

The app creates one `EventsService` at startup (`await events.start()`), hands
`events.publish` (or `events.bus`) to every call as its event callback, and stops it on shutdown
(`await events.stop()`), which flushes queued writes. Counters for /metrics are in `counters()`.
"""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import EventsSettings
from app.events.bus import Envelope, EventBus
from app.events.sql_sink import SqlSink
from app.events.webhook_delivery import WebhookDeliverer
from app.events.webhooks import WebhookSink, WebhookTargets
from pipelines.events import Event


class EventsService:
    def __init__(
        self,
        settings: EventsSettings,
        sessionmaker: async_sessionmaker[AsyncSession],
        signing_secret: str,
        *,
        http_client: httpx.AsyncClient | None = None,
        poll_interval_s: float = 2.0,
    ) -> None:
        self.bus = EventBus(queue_size=settings.ws_queue_size)
        self.sql = SqlSink(sessionmaker)
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
        self.webhooks = WebhookSink(sessionmaker, self.targets, on_recorded=self.deliverer.wake)
        self.bus.add_sink("sql", self.sql)
        self.bus.add_sink("webhooks", self.webhooks)
        self._started = False

    def publish(self, event: Event) -> Envelope:
        return self.bus.publish(event)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.sql.start()
        self.webhooks.start()
        self.deliverer.start()

    async def flush(self) -> None:
        """Wait until everything published so far is in the database (deliveries recorded,
        not necessarily sent)."""
        await self.sql.flush()
        await self.webhooks.flush()

    async def stop(self, grace_s: float = 10.0) -> None:
        if not self._started:
            return
        self._started = False
        self.bus.close()
        await self.sql.stop(grace_s)
        await self.webhooks.stop(grace_s)
        await self.deliverer.stop(min(grace_s, 5.0))

    def counters(self) -> dict[str, Any]:
        """Monotonic counters for the metrics exporter (names are Prometheus-ready)."""
        return {
            "events_published_total": self.bus.published_total,
            "event_subscribers": self.bus.subscriber_count(),
            "event_subscribers_dropped_total": self.bus.dropped_subscribers_total,
            "event_sink_errors_total": self.bus.sink_errors_total,
            "event_sql_dropped_total": self.sql.dropped_total,
            "event_sql_errors_total": self.sql.errors_total,
            "webhook_events_dropped_total": self.webhooks.dropped_total,
            "webhook_deliveries_recorded_total": self.webhooks.recorded_total,
            "webhook_deliveries_delivered_total": self.deliverer.delivered_total,
            "webhook_delivery_attempt_failures_total": self.deliverer.attempt_failures_total,
            "webhook_deliveries_failed_total": self.deliverer.failed_total,
        }
