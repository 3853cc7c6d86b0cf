"""Session lookups the Plivo callbacks need that the shared repositories do not offer.

Plivo's hangup callback for an outbound call that never connected may carry only the
`RequestUUID` the Make Call API returned, so sessions must be found by that too.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Session
from app.db.repos import sessions as sessions_repo


async def get_by_request_uuid(s: AsyncSession, request_uuid: str) -> Session | None:
    stmt = (
        select(Session)
        .where(Session.request_uuid == request_uuid)
        .order_by(Session.created_at.desc())
        .limit(1)
    )
    return (await s.execute(stmt)).scalar_one_or_none()


async def find_session(s: AsyncSession, *, session_id: str | None = None,
                       call_uuid: str | None = None,
                       request_uuid: str | None = None) -> Session | None:
    """The session a callback refers to, trying the most specific key first."""
    if session_id:
        row = await sessions_repo.get(s, session_id)
        if row is not None:
            return row
    if call_uuid:
        row = await sessions_repo.get_by_call_uuid(s, call_uuid)
        if row is not None:
            return row
    if request_uuid:
        return await get_by_request_uuid(s, request_uuid)
    return None
