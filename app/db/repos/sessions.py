"""Call sessions and what happened in them: turns, tool calls (usage lives in `usage`).

The call host writes through these as a call progresses; the REST API reads them back.
"""

from __future__ import annotations

import base64
import binascii
import json
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Session, ToolCallRecord, Turn, utcnow

STATUSES = ("ringing", "active", "ended", "failed", "interrupted")
LIVE_STATUSES = ("ringing", "active")

# This process's replica name, stamped on sessions it creates or activates (see
# Session.node_id). The service sets it at start from server.node_id.
_node_id: str = socket.gethostname()[:64]


def set_node_id(node_id: str) -> None:
    global _node_id
    _node_id = node_id[:64]


def current_node_id() -> str:
    return _node_id


class BadCursor(ValueError):
    pass


@dataclass
class SessionPage:
    items: list[Session]
    next_cursor: str | None


def encode_cursor(row: Session) -> str:
    raw = json.dumps([row.created_at.isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, sid = json.loads(raw)
        return datetime.fromisoformat(created), str(sid)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise BadCursor("invalid cursor") from exc


async def create(s: AsyncSession, **fields: Any) -> Session:
    """Insert a session. Accepts any Session column (`metadata_` for metadata); `node_id`
    defaults to this replica."""
    fields.setdefault("node_id", _node_id)
    row = Session(**fields)
    s.add(row)
    await s.flush()
    return row


async def get(s: AsyncSession, session_id: str) -> Session | None:
    return await s.get(Session, session_id)


async def get_by_call_uuid(s: AsyncSession, call_uuid: str) -> Session | None:
    stmt = (
        select(Session)
        .where(Session.call_uuid == call_uuid)
        .order_by(Session.created_at.desc())
        .limit(1)
    )
    return (await s.execute(stmt)).scalar_one_or_none()



async def get_by_request_uuid(s: AsyncSession, request_uuid: str) -> Session | None:
    """Plivo's hangup callback for an outbound call that never connected may carry only the
    `RequestUUID` the Make Call API returned."""
    stmt = (
        select(Session)
        .where(Session.request_uuid == request_uuid)
        .order_by(Session.created_at.desc())
        .limit(1)
    )
    return (await s.execute(stmt)).scalar_one_or_none()


async def find(s: AsyncSession, *, session_id: str | None = None,
               call_uuid: str | None = None,
               request_uuid: str | None = None) -> Session | None:
    """The session a carrier callback refers to, trying the most specific key first."""
    if session_id:
        row = await get(s, session_id)
        if row is not None:
            return row
    if call_uuid:
        row = await get_by_call_uuid(s, call_uuid)
        if row is not None:
            return row
    if request_uuid:
        return await get_by_request_uuid(s, request_uuid)
    return None

async def list_sessions(
    s: AsyncSession,
    *,
    agent_id: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> SessionPage:
    """Newest first. `since` is inclusive, `until` exclusive (both on created_at)."""
    stmt = select(Session)
    if agent_id is not None:
        stmt = stmt.where(Session.agent_id == agent_id)
    if status is not None:
        stmt = stmt.where(Session.status == status)
    if since is not None:
        stmt = stmt.where(Session.created_at >= since)
    if until is not None:
        stmt = stmt.where(Session.created_at < until)
    if cursor:
        c_created, c_id = decode_cursor(cursor)
        stmt = stmt.where(
            or_(
                Session.created_at < c_created,
                and_(Session.created_at == c_created, Session.id < c_id),
            )
        )
    stmt = stmt.order_by(Session.created_at.desc(), Session.id.desc()).limit(limit + 1)
    rows = list((await s.execute(stmt)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    return SessionPage(rows, encode_cursor(rows[-1]) if more and rows else None)


async def update_fields(s: AsyncSession, session_id: str, **fields: Any) -> Session | None:
    row = await s.get(Session, session_id)
    if row is None:
        return None
    for key, value in fields.items():
        if not hasattr(Session, key):
            raise AttributeError(f"Session has no column {key!r}")
        setattr(row, key, value)
    await s.flush()
    return row


async def set_status(
    s: AsyncSession, session_id: str, status: str, **fields: Any
) -> Session | None:
    """Change status (and any other columns, e.g. `answered_at`, `stream_id`). Moving to a
    live status claims the session for this replica (the stream may land on another replica
    than the one that answered)."""
    if status not in STATUSES:
        raise ValueError(f"unknown session status {status!r}")
    if status in LIVE_STATUSES:
        fields.setdefault("node_id", _node_id)
    return await update_fields(s, session_id, status=status, **fields)


async def end(
    s: AsyncSession,
    session_id: str,
    *,
    status: str = "ended",
    end_reason: str | None = None,
    hangup_cause: str | None = None,
    ended_at: datetime | None = None,
) -> Session | None:
    """Close a session and compute its duration (from answer, else from creation).

    Idempotent: a session already closed keeps its first end time and reason.
    """
    row = await s.get(Session, session_id)
    if row is None:
        return None
    if row.status not in LIVE_STATUSES:
        if hangup_cause and not row.hangup_cause:
            row.hangup_cause = hangup_cause
            await s.flush()
        return row
    if status not in STATUSES or status in LIVE_STATUSES:
        raise ValueError(f"cannot end a session with status {status!r}")
    row.status = status
    row.end_reason = end_reason
    if hangup_cause:
        row.hangup_cause = hangup_cause
    row.ended_at = ended_at or utcnow()
    start = row.answered_at or row.created_at
    row.duration_s = max(0.0, (row.ended_at - start).total_seconds())
    await s.flush()
    return row


async def mark_interrupted(
    s: AsyncSession,
    *,
    node_id: str | None = None,
    stale_before: datetime | None = None,
    reason: str = "server_restart",
) -> int:
    """Close sessions a crash left ringing/active as `interrupted`; returns how many.

    Without arguments every live session is closed (single node). With `node_id`, only this
    replica's sessions are, plus any other live session created before `stale_before` (its
    replica is gone for good: no call lasts that long).
    """
    now = utcnow()
    stmt = update(Session).where(Session.status.in_(LIVE_STATUSES))
    if node_id is not None:
        mine = Session.node_id == node_id
        stmt = stmt.where(or_(mine, Session.created_at < stale_before) if stale_before else mine)
    result = await s.execute(
        stmt.values(status="interrupted", end_reason=reason, ended_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


# --- turns ---------------------------------------------------------------------------------


async def add_turn(
    s: AsyncSession,
    session_id: str,
    role: str,
    text: str = "",
    *,
    idx: int | None = None,
    **fields: Any,
) -> Turn:
    """Append a turn. `idx` defaults to the next index in the session (callers writing one
    session's turns do so sequentially, so max+1 does not race)."""
    if idx is None:
        current = await s.execute(
            select(func.max(Turn.idx)).where(Turn.session_id == session_id)
        )
        last = current.scalar_one()
        idx = 0 if last is None else int(last) + 1
    row = Turn(session_id=session_id, role=role, text=text, idx=idx, **fields)
    s.add(row)
    await s.flush()
    return row


async def update_turn(s: AsyncSession, turn_id: str, **fields: Any) -> Turn | None:
    row = await s.get(Turn, turn_id)
    if row is None:
        return None
    for key, value in fields.items():
        if not hasattr(Turn, key):
            raise AttributeError(f"Turn has no column {key!r}")
        setattr(row, key, value)
    await s.flush()
    return row


async def list_turns(s: AsyncSession, session_id: str) -> list[Turn]:
    stmt = select(Turn).where(Turn.session_id == session_id).order_by(Turn.idx)
    return list((await s.execute(stmt)).scalars())


# --- tool calls ----------------------------------------------------------------------------


async def add_tool_call(
    s: AsyncSession,
    session_id: str,
    call_id: str,
    name: str,
    arguments: dict[str, Any] | None = None,
    *,
    turn_id: str | None = None,
) -> ToolCallRecord:
    """Record a tool call as running. `call_id` is the LLM's id and must be globally unique
    (the primary key); adapters whose models reuse ids should prefix them per session."""
    row = ToolCallRecord(
        id=call_id, session_id=session_id, name=name, arguments=arguments or {}, turn_id=turn_id
    )
    s.add(row)
    await s.flush()
    return row


async def finish_tool_call(
    s: AsyncSession,
    call_id: str,
    *,
    status: str,
    result: Any = None,
    error: str | None = None,
    latency_ms: float | None = None,
) -> ToolCallRecord | None:
    row = await s.get(ToolCallRecord, call_id)
    if row is None:
        return None
    row.status = status
    row.result = result
    row.error = error
    row.latency_ms = latency_ms
    await s.flush()
    return row


async def list_tool_calls(s: AsyncSession, session_id: str) -> list[ToolCallRecord]:
    stmt = (
        select(ToolCallRecord)
        .where(ToolCallRecord.session_id == session_id)
        .order_by(ToolCallRecord.started_at, ToolCallRecord.id)
    )
    return list((await s.execute(stmt)).scalars())
