"""/v1/sessions: call history with turns, tool calls and usage (read-only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import DbSession
from app.api.problems import not_found, problems, unprocessable
from app.api.schemas import (
    SessionDetail,
    SessionOut,
    SessionPageOut,
    SessionStatus,
    ToolCallOut,
    TurnOut,
    UsageRecordOut,
)
from app.api.timeparams import From, To, as_utc
from app.db.repos import sessions as sessions_repo
from app.db.repos import usage as usage_repo

router = APIRouter(prefix="/sessions", tags=["sessions"])


@router.get("", response_model=SessionPageOut)
async def list_sessions(
    s: DbSession,
    agent_id: str | None = None,
    status: SessionStatus | None = None,
    since: From = None,
    until: To = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> SessionPageOut:
    """Newest first. Follow `next_cursor` for older sessions."""
    try:
        page = await sessions_repo.list_sessions(
            s, agent_id=agent_id, status=status, since=as_utc(since), until=as_utc(until),
            limit=limit, cursor=cursor,
        )
    except sessions_repo.BadCursor:
        raise unprocessable([{"field": "cursor", "message": "invalid cursor"}]) from None
    return SessionPageOut(
        items=[SessionOut.model_validate(r) for r in page.items], next_cursor=page.next_cursor
    )


@router.get("/{session_id}", response_model=SessionDetail, responses=problems(404))
async def get_session(session_id: str, s: DbSession) -> SessionDetail:
    row = await sessions_repo.get(s, session_id)
    if row is None:
        raise not_found("session", session_id)
    base = SessionOut.model_validate(row).model_dump()
    return SessionDetail(
        **base,
        state=row.state or {},
        turns=[TurnOut.model_validate(t) for t in await sessions_repo.list_turns(s, row.id)],
        tool_calls=[
            ToolCallOut.model_validate(t) for t in await sessions_repo.list_tool_calls(s, row.id)
        ],
        usage=[UsageRecordOut.model_validate(u) for u in await usage_repo.for_session(s, row.id)],
    )
