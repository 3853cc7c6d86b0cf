"""Session records written through the outbox (app.outbox.service).

The Plivo edge writes a call's session row (answer URL), its activation and end (stream) and
Plivo's hangup report through the outbox, in the same ordered queue as the call's events, so
they reach the database in the order they happened even across an outage or a restart. Each
write is idempotent: replaying a record changes nothing the first application did not.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Session
from app.db.repos import sessions as sessions_repo
from app.outbox.store import Record

SESSION_CREATE = "session.create"
SESSION_ACTIVATE = "session.activate"
SESSION_END = "session.end"
PLIVO_HANGUP = "plivo.hangup"
KINDS = (SESSION_CREATE, SESSION_ACTIVATE, SESSION_END, PLIVO_HANGUP)
FAILED_CALL_STATUSES = frozenset({"busy", "failed", "timeout", "no-answer", "cancel", "canceled"})


def _dt(v: str | None) -> datetime | None:
    return datetime.fromisoformat(v) if v else None


def iso(v: datetime | None) -> str | None:
    return v.isoformat() if v is not None else None


class SessionRecords:
    """Outbox applier for the session writes of the answer URL, the stream and Plivo's hangup
    callback. Each is idempotent: replaying one changes nothing the first did not."""

    async def apply(self, db: AsyncSession, record: Record, body: Any) -> None:
        if record.kind == SESSION_CREATE:
            await create_session(db, body)
        elif record.kind == SESSION_ACTIVATE:
            row = await db.get(Session, body["id"])
            if row is not None and row.status in sessions_repo.LIVE_STATUSES:
                extra = {}
                if row.status == "ringing" and body.get("answered_at"):
                    extra["answered_at"] = _dt(body["answered_at"])
                await sessions_repo.set_status(db, row.id, "active",
                                               stream_id=body.get("stream_id"),
                                               node_id=body.get("node_id") or row.node_id,
                                               **extra)
        elif record.kind == SESSION_END:
            await sessions_repo.end(db, body["id"], status=body["status"],
                                    end_reason=body.get("end_reason"),
                                    ended_at=_dt(body.get("ended_at")))
        elif record.kind == PLIVO_HANGUP:
            await record_hangup(db, body)

    def committed(self) -> None:
        pass

    def discarded(self) -> None:
        pass


async def create_session(db: AsyncSession, body: dict[str, Any]) -> None:
    """The session a `session.create` record describes (closed at once when its status is not
    live, e.g. a refused call); nothing if it exists already."""
    if await db.get(Session, body["id"]) is not None:
        return
    fields = dict(body)
    created = _dt(fields.pop("created_at", None))
    if created is not None:
        fields["created_at"] = created
    fields["metadata_"] = fields.pop("metadata", None) or {}
    end_reason = fields.pop("end_reason", None)
    ended_at = _dt(fields.pop("ended_at", None))
    status = fields.get("status", "ringing")
    if status not in sessions_repo.LIVE_STATUSES:
        fields["status"] = "ringing"
    await sessions_repo.create(db, **fields)
    if status not in sessions_repo.LIVE_STATUSES:
        await sessions_repo.end(db, body["id"], status=status, end_reason=end_reason,
                                ended_at=ended_at)


async def record_hangup(s: AsyncSession, p: dict[str, Any]) -> tuple[str, str] | None:
    """Plivo's hangup callback applied to the session: (session id, status after), or None for
    an unknown call. Safe to apply more than once."""
    call_uuid = p.get("call_uuid") or None
    cause = p.get("cause")
    duration = p.get("duration")
    call_status = p.get("call_status") or ""
    row = await sessions_repo.find(s, session_id=p.get("session_id"), call_uuid=call_uuid,
                                   request_uuid=p.get("request_uuid"))
    if row is None:
        return None
    if call_uuid and not row.call_uuid:
        row.call_uuid = call_uuid
    if row.status == "ringing":
        # The stream never started: nothing else will close this session.
        if call_status in FAILED_CALL_STATUSES:
            status, reason = "failed", call_status.replace("-", "_")
        else:
            status, reason = "ended", "hangup_before_stream"
        await sessions_repo.end(s, row.id, status=status, end_reason=reason, hangup_cause=cause)
    elif row.status == "active":
        # The stream owner (this or another replica) ends the session when the socket
        # closes; record Plivo's side of the story now.
        if cause:
            row.hangup_cause = cause
    else:
        await sessions_repo.end(s, row.id, hangup_cause=cause)
    if duration is not None and row.status != "active":
        row.duration_s = duration
    await s.flush()
    return row.id, row.status
