"""SQL sink: persists what a call's events say (session status, turns, tool calls, usage).

The bus hands each envelope to `SqlSink.__call__`, which only enqueues (bounded; overflow is
counted and logged, never waited for). One writer task drains the queue in batches, one
transaction per batch, so the database is written off the call's hot path. If a batch fails, its
events are retried one per transaction so one bad event cannot take the others down with it.
Writes are idempotent (deterministic row ids), so a retried event does not duplicate rows.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Session, ToolCallRecord, Turn, UsageRecord
from app.db.repos import sessions as sessions_repo
from app.events.batching import next_batch
from app.events.bus import Envelope

log = logging.getLogger(__name__)

# session.ended reasons that mean the call failed rather than finished normally.
FAILED_END_REASONS = frozenset(
    {"error", "failed", "transport_error", "provider_error", "stream_error", "watchdog",
     "setup_failed"}
)
TOOL_STATUSES = frozenset({"ok", "error", "timeout", "cancelled"})
LATENCY_FIELDS = (
    "vad_stop_to_eou_ms", "eou_to_stt_final_ms", "llm_ttft_ms", "tts_ttfb_ms",
    "first_audio_out_ms", "played_ack_ms", "server_added_ms",
)


def ts_to_dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def end_status(reason: str) -> str:
    return "failed" if reason in FAILED_END_REASONS or reason.startswith("error") else "ended"


def _short_hash(*parts: str, n: int = 32) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:n]


def turn_row_id(session_id: str, turn_id: str, role: str) -> str:
    """Deterministic `turns.id` for one role of one engine turn (makes writes idempotent)."""
    return _short_hash(session_id, turn_id, role)


def tool_call_row_id(session_id: str, call_id: str) -> str:
    """`tool_calls.id`: the LLM's call id scoped by session.

    LLMs (local ones especially) reuse ids such as `call_0` in every call, so the bare id cannot
    be a primary key; the session prefix keeps it readable and unique.
    """
    rid = f"{session_id}:{call_id}"
    return rid if len(rid) <= 64 else f"{session_id}:{_short_hash(call_id, n=31)}"


class _TurnTiming:
    """When the parts of the current turn started, gathered from the events around it."""

    __slots__ = ("agent_started", "user_ended", "user_started")

    def __init__(self) -> None:
        self.user_started: float | None = None
        self.user_ended: float | None = None
        self.agent_started: float | None = None


class SqlSink:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        queue_size: int = 10_000,
        batch_size: int = 256,
        max_tracked: int = 10_000,
    ) -> None:
        self._sm = sessionmaker
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._max_tracked = max_tracked
        self._task: asyncio.Task[None] | None = None
        self._timing: collections.OrderedDict[str, _TurnTiming] = collections.OrderedDict()
        self._agent_ids: collections.OrderedDict[str, str | None] = collections.OrderedDict()
        # turn.metrics that arrived before their turn.completed, keyed by (session, turn).
        self._pending_metrics: collections.OrderedDict[tuple[str, str], dict[str, Any]] = (
            collections.OrderedDict()
        )
        self.dropped_total = 0
        self.errors_total = 0
        self.written_total = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sql-event-sink")

    async def stop(self, grace_s: float = 10.0) -> None:
        """Write everything queued so far, then stop the writer."""
        task, self._task = self._task, None
        if task is None:
            return
        stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put(("stop", stop))
        try:
            await asyncio.wait_for(asyncio.shield(task), grace_s)
        except TimeoutError:
            log.error("SQL event sink did not flush within %.1fs; %d events lost",
                      grace_s, self._queue.qsize())
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def flush(self) -> None:
        """Return once every event enqueued before this call has been written."""
        if self._task is None:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put(("flush", done))
        await done

    def __call__(self, env: Envelope) -> None:
        if not env.session_id:
            return
        try:
            self._queue.put_nowait(env)
        except asyncio.QueueFull:
            self.dropped_total += 1
            if self.dropped_total == 1 or self.dropped_total % 1000 == 0:
                log.error("SQL event sink queue full: %d events dropped so far",
                          self.dropped_total)

    # -- writer ------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            batch = await next_batch(self._queue, self._batch_size)
            envs = [b for b in batch if isinstance(b, Envelope)]
            if envs:
                await self._write(envs)
            stop = False
            for b in batch:
                if isinstance(b, tuple):
                    kind, fut = b
                    if not fut.done():
                        fut.set_result(None)
                    stop = stop or kind == "stop"
            if stop:
                return

    async def _write(self, envs: list[Envelope]) -> None:
        after: list[tuple[str, str]] = []
        try:
            async with self._sm() as db, db.begin():
                for env in envs:
                    await self._apply(db, env, after)
            self.written_total += len(envs)
        except Exception:
            log.warning("event batch of %d failed; retrying one by one", len(envs), exc_info=True)
            after.clear()
            for env in envs:
                try:
                    async with self._sm() as db, db.begin():
                        await self._apply(db, env, after)
                    self.written_total += 1
                except Exception:
                    self.errors_total += 1
                    log.exception("could not persist %s for session %s", env.type,
                                  env.session_id)
        for key in after:
            self._pending_metrics.pop(key, None)

    # -- event handlers ----------------------------------------------------------------------
    async def _apply(self, db: AsyncSession, env: Envelope, after: list[tuple[str, str]]) -> None:
        ev = env.event
        sid = ev.session_id
        t = ev.type
        if t == "session.started":
            await self._session_started(db, env)
        elif t == "session.ended":
            await self._session_ended(db, env)
        elif t == "user.speech_started":
            timing = self._timing_for(sid)
            if timing.user_started is None:
                timing.user_started = ev.ts
        elif t == "user.turn_completed":
            self._timing_for(sid).user_ended = ev.ts
        elif t == "agent.speech_started":
            timing = self._timing_for(sid)
            if timing.agent_started is None:
                timing.agent_started = ev.ts
        elif t == "turn.completed":
            await self._turn_completed(db, env, after)
        elif t == "turn.metrics":
            await self._turn_metrics(db, env)
        elif t == "tool.called":
            await self._tool_called(db, env)
        elif t in ("tool.completed", "tool.failed"):
            await self._tool_finished(db, env)
        elif t == "session.usage":
            await self._usage(db, env)
        elif t == "voicemail.detected":
            await db.execute(
                update(Session).where(Session.id == sid)
                .values(voicemail=str(getattr(ev, "result", "")) or None)
            )

    async def _session_started(self, db: AsyncSession, env: Envelope) -> None:
        ev = env.event
        d = ev.payload()
        self._remember(self._agent_ids, ev.session_id, d.get("agent_id") or None)
        values: dict[str, Any] = {"status": "active", "answered_at": ts_to_dt(ev.ts)}
        for key in ("call_uuid", "direction", "from_number", "to_number"):
            if d.get(key):
                values[key] = d[key]
        res = await db.execute(
            update(Session)
            .where(Session.id == ev.session_id, Session.status.in_(("ringing", "active")))
            .values(**values)
        )
        if res.rowcount:  # type: ignore[attr-defined]
            return
        if await db.get(Session, ev.session_id) is None:
            # The host normally creates the row at answer time; keep the record anyway.
            db.add(Session(
                id=ev.session_id,
                agent_id=d.get("agent_id") or None,
                agent_version=d.get("agent_version") or None,
                created_at=ts_to_dt(ev.ts),
                **values,
            ))

    async def _session_ended(self, db: AsyncSession, env: Envelope) -> None:
        ev = env.event
        d = ev.payload()
        reason = str(d.get("reason") or "")
        # The repository's end() is idempotent: if the host already closed the session (e.g.
        # from Plivo's hangup callback) the first end time and reason are kept.
        row = await sessions_repo.end(
            db, ev.session_id, status=end_status(reason), end_reason=reason or None,
            ended_at=ts_to_dt(ev.ts),
        )
        if row is not None and d.get("report"):
            row.report = d["report"]
            await db.flush()
        self._timing.pop(ev.session_id, None)
        self._agent_ids.pop(ev.session_id, None)

    async def _turn_completed(
        self, db: AsyncSession, env: Envelope, after: list[tuple[str, str]]
    ) -> None:
        ev = env.event
        d = ev.payload()
        sid = ev.session_id
        turn_id = str(d.get("turn_id") or env.id)
        timing = self._timing.pop(sid, None) or _TurnTiming()
        key = (sid, turn_id)
        latency = self._pending_metrics.get(key)
        user_text = str(d.get("user_text") or "")
        agent_text = str(d.get("agent_text") or "")
        heard = d.get("heard_text")
        interrupted = bool(d.get("interrupted"))
        has_agent = bool(agent_text or heard)

        rows: list[Turn] = []
        if user_text:
            rows.append(Turn(
                id=turn_row_id(sid, turn_id, "user"),
                session_id=sid,
                role="user",
                text=user_text,
                started_at=ts_to_dt(timing.user_started or timing.user_ended or ev.ts),
                ended_at=ts_to_dt(timing.user_ended or ev.ts),
                latency=None if has_agent else latency,
            ))
        if has_agent:
            rows.append(Turn(
                id=turn_row_id(sid, turn_id, "assistant"),
                session_id=sid,
                role="assistant",
                text=agent_text,
                heard_text=heard if heard is not None else agent_text,
                interrupted=interrupted,
                started_at=ts_to_dt(timing.agent_started or ev.ts),
                ended_at=ts_to_dt(ev.ts),
                latency=latency,
            ))
        if not rows:
            return
        existing = set((await db.execute(
            select(Turn.id).where(Turn.id.in_([r.id for r in rows]))
        )).scalars())
        rows = [r for r in rows if r.id not in existing]
        if not rows:
            return
        top = (await db.execute(
            select(func.max(Turn.idx)).where(Turn.session_id == sid)
        )).scalar()
        next_idx = -1 if top is None else int(top)
        for r in rows:
            next_idx += 1
            r.idx = next_idx
            db.add(r)
        await db.flush()
        if latency is not None:
            after.append(key)

    async def _turn_metrics(self, db: AsyncSession, env: Envelope) -> None:
        ev = env.event
        d = ev.payload()
        sid = ev.session_id
        turn_id = str(d.get("turn_id") or "")
        latency = {k: d[k] for k in LATENCY_FIELDS if d.get(k) is not None}
        # Keep any extra stages a newer engine reports.
        latency.update({k: v for k, v in d.items() if k not in LATENCY_FIELDS
                        and k != "turn_id" and v is not None})
        for role in ("assistant", "user"):
            res = await db.execute(
                update(Turn).where(Turn.id == turn_row_id(sid, turn_id, role))
                .values(latency=latency)
            )
            if res.rowcount:  # type: ignore[attr-defined]
                return
        self._remember(self._pending_metrics, (sid, turn_id), latency)

    async def _tool_called(self, db: AsyncSession, env: Envelope) -> None:
        ev = env.event
        d = ev.payload()
        rid = tool_call_row_id(ev.session_id, str(d.get("call_id") or env.id))
        if await db.get(ToolCallRecord, rid) is not None:
            return
        db.add(ToolCallRecord(
            id=rid,
            session_id=ev.session_id,
            turn_id=(str(d["turn_id"])[:32] if d.get("turn_id") else None),
            name=str(d.get("name") or ""),
            arguments=d.get("arguments") if isinstance(d.get("arguments"), dict) else {},
            status="running",
            started_at=ts_to_dt(ev.ts),
        ))
        await db.flush()

    async def _tool_finished(self, db: AsyncSession, env: Envelope) -> None:
        ev = env.event
        d = ev.payload()
        rid = tool_call_row_id(ev.session_id, str(d.get("call_id") or ""))
        if ev.type == "tool.completed":
            values: dict[str, Any] = {"status": "ok", "result": _jsonable(d.get("result")),
                                      "error": None}
        else:
            status = str(d.get("status") or "error")
            values = {"status": status if status in TOOL_STATUSES else "error",
                      "error": str(d.get("error") or "") or None}
        values["latency_ms"] = float(d.get("latency_ms") or 0.0)
        # The first outcome wins, except that a failure may correct an "ok" (a builtin whose
        # hang-up/transfer step failed after its result was reported). This also keeps the
        # record right if both the executor and the engine report the same call.
        replaceable = ("running",) if ev.type == "tool.completed" else ("running", "ok")
        res = await db.execute(
            update(ToolCallRecord)
            .where(ToolCallRecord.id == rid, ToolCallRecord.status.in_(replaceable))
            .values(**values)
        )
        updated = bool(res.rowcount)  # type: ignore[attr-defined]
        if not updated and await db.get(ToolCallRecord, rid) is None:
            # No tool.called seen (e.g. dropped): still record the outcome.
            db.add(ToolCallRecord(
                id=rid, session_id=ev.session_id, name=str(d.get("name") or ""),
                started_at=ts_to_dt(ev.ts), **values,
            ))
            await db.flush()

    async def _usage(self, db: AsyncSession, env: Envelope) -> None:
        ev = env.event
        d = ev.payload()
        sid = ev.session_id
        if sid in self._agent_ids:
            agent_id = self._agent_ids[sid]
        else:
            agent_id = (await db.execute(
                select(Session.agent_id).where(Session.id == sid)
            )).scalar()
            self._remember(self._agent_ids, sid, agent_id)
        db.add(UsageRecord(
            session_id=sid,
            agent_id=agent_id,
            kind=str(d.get("kind") or "")[:8],
            provider=str(d.get("provider") or ""),
            model=str(d.get("model") or ""),
            metric=str(d.get("metric") or ""),
            quantity=float(d.get("quantity") or 0.0),
            created_at=ts_to_dt(ev.ts),
        ))

    # -- helpers -----------------------------------------------------------------------------
    def _timing_for(self, sid: str) -> _TurnTiming:
        timing = self._timing.get(sid)
        if timing is None:
            timing = _TurnTiming()
            self._remember(self._timing, sid, timing)
        return timing

    def _remember(self, od: collections.OrderedDict[Any, Any], key: Any, value: Any) -> None:
        od[key] = value
        od.move_to_end(key)
        while len(od) > self._max_tracked:
            od.popitem(last=False)


def _jsonable(value: Any) -> Any:
    """Tool results come from arbitrary webhooks; store what JSON can hold."""
    if value is None or isinstance(value, (str, int, float, bool, list, dict)):
        return value
    return str(value)
