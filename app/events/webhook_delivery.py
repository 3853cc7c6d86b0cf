"""Sends pending `webhook_deliveries` rows: signed, retried with backoff, ordered per session.

The worker only trusts the table, so deliveries survive restarts and may be sent by any replica:
- A row is *due* when it is pending, its `next_attempt_at` has passed and no earlier pending row
  of the same session exists — a session's events go out in order, and event n+1 waits until n
  was delivered or permanently failed.
- A row is *claimed* with `UPDATE … SET attempts = attempts + 1, next_attempt_at = now + lease
  WHERE id = :id AND status = 'pending' AND attempts = :seen`. Exactly one replica wins; the
  lease keeps the row invisible while it is in flight, and if that replica dies mid-send the
  lease expires and someone else retries it (at-least-once; receivers dedupe on the event id).
- After the attempt the outcome is written guarded by the same attempt number, so a late answer
  from a replica whose lease had expired cannot overwrite a newer attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
from sqlalchemy import exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from app.db.models import WebhookDelivery, utcnow
from app.events.signing import EVENT_ID_HEADER, EVENT_TYPE_HEADER, signature_headers
from app.outbox.service import is_outage

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BACKOFF_S = 3600.0
USER_AGENT = "Phonebooth-Webhooks/1"


def _aware(dt: datetime) -> datetime:
    # SQLite hands timestamps back without tzinfo; everything we store is UTC.
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def encode_body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode()


class WebhookDeliverer:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        signing_secret: str,
        *,
        timeout_s: float = 5.0,
        max_attempts: int = 6,
        backoff_s: float = 1.0,
        max_concurrency: int = 16,
        poll_interval_s: float = 2.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._sm = sessionmaker
        self._secret = signing_secret
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_concurrency = max_concurrency
        self.poll_interval_s = poll_interval_s
        self.lease_s = timeout_s + 30.0
        self._client = client
        self._own_client = client is None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: dict[str, asyncio.Task[None]] = {}
        # Exported by the metrics module.
        self.delivered_total = 0
        self.attempt_failures_total = 0  # each non-2xx / network error, retried or not
        self.failed_total = 0  # deliveries given up after max_attempts

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout_s, follow_redirects=False,
                headers={"User-Agent": USER_AGENT},
            )
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="webhook-deliverer")

    def wake(self) -> None:
        """New rows were recorded (or a delivery finished): look for due work now."""
        self._wake.set()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop claiming; give in-flight sends `grace_s` to finish (leases cover the rest)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._inflight:
            _, pending = await asyncio.wait(list(self._inflight.values()), timeout=grace_s)
            for t in pending:
                t.cancel()
            for t in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- loop --------------------------------------------------------------------------------
    async def _run(self) -> None:
        away = False
        while True:
            self._wake.clear()
            delay = self.poll_interval_s
            try:
                claimed, next_due = await self._dispatch_due()
                away = False
                if claimed:
                    continue
                if next_due is not None:
                    delay = max(0.0, min(delay, (next_due - utcnow()).total_seconds()))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_outage(exc):
                    log.exception("webhook delivery scan failed")
                elif not away:  # once per outage: pending rows wait in the table
                    away = True
                    log.warning("webhook deliveries paused: the database is unreachable (%s)",
                                type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    async def _dispatch_due(self) -> tuple[int, datetime | None]:
        """Claim and start due deliveries; return (claimed, earliest future attempt time)."""
        capacity = self.max_concurrency - len(self._inflight)
        if capacity <= 0:
            return 0, None
        now = utcnow()
        W = WebhookDelivery
        earlier = aliased(WebhookDelivery)
        blocked = exists().where(
            earlier.session_id == W.session_id,
            earlier.status == "pending",
            earlier.created_at < W.created_at,
        )
        async with self._sm() as db:
            rows = (await db.execute(
                select(W.id, W.attempts)
                .where(W.status == "pending", W.next_attempt_at <= now, ~blocked)
                .order_by(W.created_at)
                .limit(capacity)
            )).all()
            claimed = 0
            for row_id, attempts in rows:
                if row_id in self._inflight:
                    continue
                res = await db.execute(
                    update(W)
                    .where(W.id == row_id, W.status == "pending", W.attempts == attempts,
                           W.next_attempt_at <= now)
                    .values(attempts=attempts + 1,
                            next_attempt_at=now + timedelta(seconds=self.lease_s))
                )
                await db.commit()
                if res.rowcount == 1:  # type: ignore[attr-defined]
                    claimed += 1
                    self._inflight[row_id] = asyncio.create_task(
                        self._deliver(row_id, attempts + 1), name=f"webhook-{row_id}"
                    )
            next_due = None
            if not claimed:
                nxt = (await db.execute(
                    select(func.min(W.next_attempt_at)).where(W.status == "pending")
                )).scalar()
                next_due = _aware(nxt) if nxt is not None else None
        return claimed, next_due

    # -- one attempt -------------------------------------------------------------------------
    async def _deliver(self, row_id: str, attempt: int) -> None:
        lease_ends = asyncio.get_running_loop().time() + self.lease_s
        try:
            row = await self._while_leased(lambda: self._load(row_id), lease_ends)
            if row is None:
                return
            url, payload, event_id, event_type = row
            status_code, error = await self._post(url, payload, event_id, event_type, attempt)
            await self._while_leased(
                lambda: self._record_outcome(row_id, attempt, status_code, error), lease_ends)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook delivery %s crashed; the lease will expire and retry", row_id)
        finally:
            self._inflight.pop(row_id, None)
            self._wake.set()

    async def _post(
        self, url: str, payload: dict[str, Any], event_id: str, event_type: str, attempt: int
    ) -> tuple[int | None, str | None]:
        assert self._client is not None
        body = encode_body(payload)
        headers = {
            "Content-Type": "application/json",
            EVENT_ID_HEADER: event_id,
            EVENT_TYPE_HEADER: event_type,
            "X-Phonebooth-Delivery-Attempt": str(attempt),
            # Signed per attempt: the timestamp must be fresh for the receiver's replay window.
            **signature_headers(self._secret, body),
        }
        try:
            resp = await self._client.post(url, content=body, headers=headers,
                                           timeout=self.timeout_s)
        except httpx.TimeoutException:
            return None, f"timeout after {self.timeout_s:g}s"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:500]
        if 200 <= resp.status_code < 300:
            return resp.status_code, None
        return resp.status_code, f"HTTP {resp.status_code}: {resp.text[:200]}"

    def backoff(self, attempt: int) -> float:
        """Delay before attempt `attempt + 1`: exponential with ±10% jitter, capped."""
        base = min(MAX_BACKOFF_S, self.backoff_s * (2 ** (attempt - 1)))
        return base * random.uniform(0.9, 1.1)

    async def _load(self, row_id: str) -> tuple[str, dict[str, Any], str, str] | None:
        async with self._sm() as db:
            row = await db.get(WebhookDelivery, row_id)
            if row is None:
                return None
            return row.url, dict(row.payload), row.event_id, row.event_type

    async def _while_leased(self, step: Callable[[], Awaitable[T]], lease_ends: float) -> T:
        """Run a database step of a claimed delivery, retrying while the database is away and
        the lease holds: a row claimed just before an outage then goes out as soon as the
        database is back (not a lease later), and a delivery the receiver already accepted is
        not sent again."""
        loop = asyncio.get_running_loop()
        delay = 0.2
        while True:
            try:
                return await step()
            except Exception as exc:
                if not is_outage(exc) or loop.time() + delay >= lease_ends:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _record_outcome(
        self, row_id: str, attempt: int, status_code: int | None, error: str | None
    ) -> None:
        now = utcnow()
        values: dict[str, Any] = {"last_status_code": status_code, "last_error": error}
        if error is None:
            values.update(status="delivered", delivered_at=now)
        else:
            self.attempt_failures_total += 1
            if attempt >= self.max_attempts:
                values["status"] = "failed"
            else:
                values["next_attempt_at"] = now + timedelta(seconds=self.backoff(attempt))
        W = WebhookDelivery
        async with self._sm() as db, db.begin():
            res = await db.execute(
                update(W).where(W.id == row_id, W.attempts == attempt, W.status == "pending")
                .values(**values)
            )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            log.warning("webhook delivery %s: attempt %d outcome is stale", row_id, attempt)
            return
        if error is None:
            self.delivered_total += 1
        elif values.get("status") == "failed":
            self.failed_total += 1
            log.warning("webhook delivery %s failed permanently after %d attempts: %s",
                        row_id, attempt, error)
        else:
            log.info("webhook delivery %s attempt %d failed (%s); retrying", row_id, attempt,
                     error)
