"""Lifecycle component (app.main.COMPONENTS): the bus, between the event plumbing and the
call host.

Without `bus.url` it installs a `LocalBus` and nothing changes. With it, a `RedisBus` that:
shares every event this process publishes (a sink on the event bus) and hands other
processes' events to this process's subscribers (`EventBus.deliver`); carries out control
requests for the calls hosted here (`ControlServer`); and, when a node dies, closes its calls
here: the session ends as `interrupted` with reason `node_lost`, and a `session.ended` event
with that reason goes to webhooks and WebSockets like any other.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from app import metrics
from app.bus.base import BUS_KEY, NODE_LOST_REASON, LocalBus, node_name
from app.bus.control import ControlServer
from app.bus.redis_bus import RedisBus
from app.db.models import utcnow
from app.events.service import restore_envelope
from app.outbox.sessions import SESSION_END, iso
from app.state import AppState
from pipelines import events as ev

log = logging.getLogger(__name__)

SINK = "cluster"


def _bus_metrics(bus: RedisBus) -> Any:
    def source() -> list[Any]:
        return [
            metrics.gauge("bus_up", "1 while Redis (bus.url) answers", 1.0 if bus.up else 0.0),
            metrics.counter("bus_events_dropped_total",
                            "Events not shared with other processes (Redis behind)",
                            float(bus.events_dropped_total)),
            metrics.counter("bus_nodes_lost_calls_total",
                            "Calls closed here because the process hosting them was lost",
                            float(bus.nodes_lost_total)),
        ]
    return source


@asynccontextmanager
async def bus_component(app: Any, state: AppState) -> AsyncIterator[Any]:
    settings = state.settings
    node = node_name(settings.server.node_id)
    if not settings.bus.enabled:
        state.extras[BUS_KEY] = LocalBus(node)
        try:
            yield state.extras[BUS_KEY]
        finally:
            state.extras.pop(BUS_KEY, None)
        return

    events = state.events
    if events is None:
        raise RuntimeError("the bus needs the event service (events_component) started first")
    bus = RedisBus(settings.bus, node)
    control = ControlServer(state)
    bus.on_request = control
    bus.on_event = lambda d: events.bus.deliver(restore_envelope(d))

    async def node_lost(session_id: str, lost: str) -> None:
        # The session record first, in order behind whatever the outbox holds for it; then the
        # event (its own end is idempotent) for webhooks and live subscribers.
        events.outbox.put(SESSION_END, session_id, {
            "id": session_id, "status": "interrupted", "end_reason": NODE_LOST_REASON,
            "ended_at": iso(utcnow())})
        event = ev.SessionEnded(reason=NODE_LOST_REASON)
        event.session_id = session_id
        events.publish(event)

    bus.on_node_lost = node_lost
    await bus.start()
    events.bus.add_sink(SINK, lambda env: bus.publish_event(env.to_dict()))
    state.extras[BUS_KEY] = bus
    metrics.ENGINE.set("bus", _bus_metrics(bus))
    log.info("bus: node %s joined through Redis (prefix %s)", node, settings.bus.key_prefix)
    try:
        yield bus
    finally:
        events.bus.remove_sink(SINK)
        state.extras.pop(BUS_KEY, None)
        await control.close()
        await bus.stop()
