"""Agent event webhooks: signed, retried, recorded, ordered per session, redelivered."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable

from sqlalchemy import select, update

from app.db.engine import Database
from app.db.models import WebhookDelivery, utcnow
from app.events.service import EventsService
from app.events.signing import EVENT_ID_HEADER, verify_signature
from app.events.webhooks import event_matches
from pipelines import events as ev
from tests.events.conftest import SIGNING_SECRET, call_events, make_session
from tests.events.local_http import LocalHttpServer, Received, ok_json


class FlakyReceiver:
    """Fails the first `failures` requests, then accepts; remembers accepted event ids."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.accepted: list[str] = []
        self.bodies: list[dict] = []
        self._lock = threading.Lock()

    def __call__(self, r: Received) -> tuple[int, dict[str, str], bytes]:
        verify_signature(SIGNING_SECRET, r.headers, r.body)  # raises -> 599 in the server
        with self._lock:
            if self.failures > 0:
                self.failures -= 1
                return 503, {}, b"try later"
            event_id = r.headers[EVENT_ID_HEADER]
            if event_id not in self.accepted:  # what an idempotent receiver does
                self.accepted.append(event_id)
                self.bodies.append(json.loads(r.body))
        return ok_json()


async def _deliveries(database: Database, sid: str) -> list[WebhookDelivery]:
    async with database.session() as s:
        return list((await s.execute(
            select(WebhookDelivery).where(WebhookDelivery.session_id == sid)
            .order_by(WebhookDelivery.created_at)
        )).scalars())


async def _wait_settled(database: Database, sid: str, n: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        rows = await _deliveries(database, sid)
        if len(rows) == n and all(r.status != "pending" for r in rows):
            return
        if time.monotonic() > deadline:
            raise AssertionError([(r.event_type, r.status, r.attempts) for r in rows])
        await asyncio.sleep(0.05)


def test_event_filter_patterns() -> None:
    assert event_matches("tool.called", [])
    assert event_matches("tool.called", ["tool.*"])
    assert event_matches("tool.called", ["*"])
    assert event_matches("session.ended", ["user.dtmf", "session.ended"])
    assert not event_matches("toolbox.x", ["tool.*"])
    assert not event_matches("user.dtmf", ["session.*"])


async def test_failing_receiver_gets_every_event_once_in_order(
    database: Database, events: EventsService
) -> None:
    receiver = FlakyReceiver(failures=2)
    with LocalHttpServer(receiver) as server:
        sid, agent_id = await make_session(database, webhook_url=server.url + "/hook")
        published = [events.publish(e) for e in call_events(sid, agent_id)]
        await _wait_settled(database, sid, len(published))

        requests = server.snapshot()
    assert receiver.accepted == [p.id for p in published]  # all, once each, in order
    assert len(requests) == len(published) + 2  # two failed attempts, retried
    # The retried event carried the same idempotency key on each attempt.
    first_id = published[0].id
    assert [r.headers[EVENT_ID_HEADER] for r in requests[:3]] == [first_id] * 3
    assert [r.headers["X-Phonebooth-Delivery-Attempt"] for r in requests[:3]] == ["1", "2", "3"]
    body = receiver.bodies[-1]
    assert body["type"] == "session.ended" and body["session_id"] == sid
    assert body["data"]["report"] == {"turns": 5} and body["seq"] == len(published)
    assert set(body) == {"id", "type", "session_id", "seq", "ts", "data"}

    rows = await _deliveries(database, sid)
    assert [r.event_id for r in rows] == [p.id for p in published]
    assert all(r.status == "delivered" and r.last_status_code == 200 for r in rows)
    assert rows[0].attempts == 3 and rows[0].last_error is None
    assert all(r.attempts == 1 for r in rows[1:])
    assert events.deliverer.attempt_failures_total == 2


async def test_permanent_failure_is_recorded_and_unblocks_the_session(
    database: Database, events_factory: Callable[..., EventsService]
) -> None:
    events = events_factory(webhook_max_attempts=2)
    await events.start()

    def respond(r: Received) -> tuple[int, dict[str, str], bytes]:
        body = json.loads(r.body)
        return (500, {}, b"broken") if body["type"] == "session.started" else ok_json()

    with LocalHttpServer(respond) as server:
        sid, _ = await make_session(database, webhook_url=server.url + "/hook")
        events.publish(ev.SessionStarted(session_id=sid))
        events.publish(ev.UserSpeechStarted(session_id=sid))
        await _wait_settled(database, sid, 2)
        order = [json.loads(r.body)["type"] for r in server.snapshot()]
    rows = await _deliveries(database, sid)
    assert [(r.event_type, r.status, r.attempts, r.last_status_code) for r in rows] == [
        ("session.started", "failed", 2, 500),
        ("user.speech_started", "delivered", 1, 200),
    ]
    assert "HTTP 500" in (rows[0].last_error or "")
    # Event 2 was only sent after event 1 had permanently failed.
    assert order == ["session.started", "session.started", "user.speech_started"]
    assert events.deliverer.failed_total == 1


async def test_only_subscribed_event_types_are_recorded(
    database: Database, events: EventsService
) -> None:
    with LocalHttpServer() as server:
        sid, agent_id = await make_session(database, webhook_url=server.url,
                                           webhook_events=["session.started", "tool.*",
                                                           "session.ended"])
        for e in call_events(sid, agent_id):
            events.publish(e)
        await events.flush()
        await _wait_settled(database, sid, 4)
    rows = await _deliveries(database, sid)
    assert [r.event_type for r in rows] == ["session.started", "tool.called", "tool.completed",
                                            "session.ended"]


async def test_no_webhook_means_no_rows(database: Database, events: EventsService) -> None:
    sid, agent_id = await make_session(database)
    for e in call_events(sid, agent_id):
        events.publish(e)
    await events.flush()
    assert await _deliveries(database, sid) == []


async def test_pending_deliveries_are_sent_after_a_restart(
    database: Database, events_factory: Callable[..., EventsService]
) -> None:
    # First process: the receiver is down (connection refused), then the process stops.
    with LocalHttpServer() as dead:
        port = dead.port
    url = f"http://127.0.0.1:{port}/hook"
    sid, agent_id = await make_session(database, webhook_url=url)
    first = events_factory(webhook_max_attempts=50)
    await first.start()
    published = [first.publish(e) for e in call_events(sid, agent_id)]
    await first.flush()
    for _ in range(1000):  # until the first attempt has failed
        if (await _deliveries(database, sid))[0].last_error:
            break
        await asyncio.sleep(0.02)
    await first.stop()
    rows = await _deliveries(database, sid)
    assert len(rows) == len(published) and all(r.status == "pending" for r in rows)
    assert rows[0].attempts >= 1 and rows[0].last_status_code is None and rows[0].last_error

    # The receiver comes back on the same port; a new process on the same database delivers
    # everything that was pending, in order, exactly once.
    receiver = FlakyReceiver(failures=0)
    with LocalHttpServer(receiver, port=port):
        async with database.transaction() as s:  # as if the backoff had elapsed meanwhile
            await s.execute(update(WebhookDelivery).where(WebhookDelivery.session_id == sid)
                            .values(next_attempt_at=utcnow()))
        second = events_factory()
        await second.start()
        await _wait_settled(database, sid, len(published))
    assert receiver.accepted == [p.id for p in published]


async def test_two_deliverers_on_one_database_send_each_event_once(
    database: Database, events_factory: Callable[..., EventsService]
) -> None:
    """Two replicas' workers race for the same rows; the claim guard lets only one win."""
    seen: list[str] = []
    lock = threading.Lock()

    def respond(r: Received) -> tuple[int, dict[str, str], bytes]:
        with lock:
            seen.append(r.headers[EVENT_ID_HEADER])
        return ok_json()

    with LocalHttpServer(respond) as server:
        sids = [(await make_session(database, webhook_url=server.url))[0] for _ in range(4)]
        producer = events_factory()
        # Record rows without a running deliverer in the producer, then let two race.
        await producer.outbox.start()
        ids = [producer.publish(ev.UserTranscription(session_id=sid, text=str(i))).id
               for i in range(10) for sid in sids]
        await producer.outbox.flush()
        a, b = events_factory(), events_factory()
        await a.start()
        await b.start()
        for sid in sids:
            await _wait_settled(database, sid, 10)
    assert sorted(seen) == sorted(ids)  # every event, none twice
    assert a.deliverer.delivered_total + b.deliverer.delivered_total == len(ids)
