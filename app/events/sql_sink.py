"""SQL sink: persists what a call's events say (session status, turns, tool calls, usage).

Events reach it through the outbox (app.outbox): the bus's `records` sink puts each envelope in
the durable local queue, and the outbox's replayer calls `SqlSink.apply` for it inside its
batch transaction, in publish order, off the call's hot path. A batch is retried after an
outage and replayed after a crash, so every write here is idempotent: deterministic row ids for
turns and tool calls, the event id on usage rows, guarded status updates.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import logging
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Insert, Table, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Session, ToolCallRecord, Turn, UsageRecord
from app.db.repos import sessions as sessions_repo
from app.events.bus import Envelope
from pipelines.outcomes import is_failure

log = logging.getLogger(__name__)

# The event types `SqlSink.apply` writes or needs (turn timing); others are not its business.
SQL_EVENT_TYPES = frozenset({
    "session.started", "session.ended", "user.speech_started", "user.turn_completed",
    "agent.speech_started", "turn.completed", "turn.metrics", "tool.called", "tool.completed",
    "tool.failed", "session.usage", "voicemail.detected",
})
TOOL_STATUSES = frozenset({"ok", "error", "timeout", "cancelled"})
LATENCY_FIELDS = (
    "vad_stop_to_eou_ms", "eou_to_stt_final_ms", "llm_ttft_ms", "tts_ttfb_ms",
    "first_audio_out_ms", "played_ack_ms", "server_added_ms",
)


def ts_to_dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def end_status(reason: str) -> str:
    return "failed" if is_failure(reason) else "ended"


# Core statements on the tables, not ORM units of work: a call writes ~8 records a turn, and the
# ORM's flush, identity map and per-statement cache keys cost several times the SQL itself
# (see docs/benchmarks.md, "The call records' SQL"). Both dialects we support insert-or-skip,
# which makes a replayed record a no-op without a lookup before each insert.
_TURNS = cast(Table, Turn.__table__)
_USAGE = cast(Table, UsageRecord.__table__)


def _insert_or_skip(db: AsyncSession, table: Table, conflict_on: str) -> Insert:
    """INSERT … ON CONFLICT (conflict_on) DO NOTHING in the session's dialect."""
    return _insert_or_skip_in(db.get_bind().dialect.name, table, conflict_on)


@functools.cache
def _insert_or_skip_in(dialect: str, table: Table, conflict_on: str) -> Insert:
    # Built once per dialect and table, not once per record: the statement is immutable.
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=[conflict_on])
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=[conflict_on])
    raise RuntimeError(f"unsupported database dialect {dialect!r}")


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
    """Writes one event's meaning inside the outbox replayer's transaction (see module doc)."""

    def __init__(self, *, max_tracked: int = 10_000) -> None:
        self._max_tracked = max_tracked
        self._timing: collections.OrderedDict[str, _TurnTiming] = collections.OrderedDict()
        self._agent_ids: collections.OrderedDict[str, str | None] = collections.OrderedDict()
        # turn.metrics that arrived before their turn.completed, keyed by (session, turn).
        self._pending_metrics: collections.OrderedDict[tuple[str, str], dict[str, Any]] = (
            collections.OrderedDict()
        )
        # Metrics attached by the open transaction: forgotten once it commits.
        self._after: list[tuple[str, str]] = []
        # The last `turns.idx` written per session, so a turn is one INSERT, not a MAX query
        # first. Forgotten whenever a transaction is discarded: it may have advanced them.
        self._last_idx: collections.OrderedDict[str, int] = collections.OrderedDict()

    def committed(self) -> None:
        for key in self._after:
            self._pending_metrics.pop(key, None)
        self._after.clear()

    def discarded(self) -> None:
        self._after.clear()
        self._last_idx.clear()

    # -- event handlers ----------------------------------------------------------------------
    async def apply(self, db: AsyncSession, env: Envelope) -> None:
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
            await self._turn_completed(db, env)
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
                .values(voicemail=str(ev.payload().get("result") or "") or None)
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
            # Now: the Core inserts that follow (turns, usage) do not flush the ORM first.
            await db.flush()

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
        self._last_idx.pop(ev.session_id, None)

    async def _turn_completed(self, db: AsyncSession, env: Envelope) -> None:
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

        rows: list[dict[str, Any]] = []
        if user_text:
            rows.append({
                "id": turn_row_id(sid, turn_id, "user"),
                "role": "user",
                "text": user_text,
                "heard_text": None,
                "interrupted": False,
                "started_at": ts_to_dt(timing.user_started or timing.user_ended or ev.ts),
                "ended_at": ts_to_dt(timing.user_ended or ev.ts),
                "latency": None if has_agent else latency,
            })
        if has_agent:
            rows.append({
                "id": turn_row_id(sid, turn_id, "assistant"),
                "role": "assistant",
                "text": agent_text,
                "heard_text": heard if heard is not None else agent_text,
                "interrupted": interrupted,
                "started_at": ts_to_dt(timing.agent_started or ev.ts),
                "ended_at": ts_to_dt(ev.ts),
                "latency": latency,
            })
        if not rows:
            return
        last = self._last_idx.get(sid)
        if last is None:
            top = (await db.execute(
                select(func.max(_TURNS.c.idx)).where(_TURNS.c.session_id == sid)
            )).scalar()
            last = -1 if top is None else int(top)
        # A replayed turn's rows are already there: skipped, and the indexes they would have
        # taken stay unused (a gap orders the same as none).
        for r in rows:
            last += 1
            r["idx"] = last
            r["session_id"] = sid
        self._remember(self._last_idx, sid, last)
        await db.execute(_insert_or_skip(db, _TURNS, "id"), rows)
        if latency is not None:
            self._after.append(key)

    async def _turn_metrics(self, db: AsyncSession, env: Envelope) -> None:
        ev = env.event
        d = ev.payload()
        sid = ev.session_id
        turn_id = str(d.get("turn_id") or "")
        latency = {k: d[k] for k in LATENCY_FIELDS if d.get(k) is not None}
        # Keep any extra stages a newer engine reports.
        latency.update({k: v for k, v in d.items() if k not in LATENCY_FIELDS
                        and k != "turn_id" and v is not None and v is not False})
        for role in ("assistant", "user"):
            res = await db.execute(
                update(_TURNS).where(_TURNS.c.id == turn_row_id(sid, turn_id, role))
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
        # Replayed after a crash: the row is already there and the insert is skipped.
        await db.execute(_insert_or_skip(db, _USAGE, "event_id"), {
            "event_id": env.id,
            "session_id": sid,
            "agent_id": agent_id,
            "kind": str(d.get("kind") or "")[:8],
            "provider": str(d.get("provider") or ""),
            "model": str(d.get("model") or ""),
            "metric": str(d.get("metric") or ""),
            "quantity": float(d.get("quantity") or 0.0),
            "created_at": ts_to_dt(ev.ts),
        })

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
