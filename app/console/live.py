"""`GET /v1/live-calls`: the calls this replica is hosting right now, for the console.

The session list says which calls are live in the database; only the host knows what each one is
doing this second (listening, thinking, speaking) and its latest line, so this reads the live-call
registry. Calls hosted by another replica are listed by that replica.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.api.deps import State
from app.calls.registry import LiveCalls

router = APIRouter(tags=["sessions"])


class LiveLine(BaseModel):
    role: str = Field(description="user | assistant")
    text: str


class LiveCallOut(BaseModel):
    session_id: str
    agent_id: str | None
    agent_version: int | None
    direction: str
    from_number: str
    to_number: str
    started_at: datetime
    duration_s: float
    state: str = Field(description="The agent's state: listening | thinking | speaking | ...")
    last_line: LiveLine | None = Field(description="The latest completed line of the call")
    playground: bool = Field(description="A browser playground call rather than a phone call")


class LiveCallList(BaseModel):
    items: list[LiveCallOut]


def _describe(session_id: str, call: Any, now: float) -> LiveCallOut | None:
    info = getattr(call, "info", None)
    if info is None or getattr(call, "ended", False):
        return None
    duration = max(0.0, now - float(getattr(call, "started", now)))
    conversation = getattr(call, "conversation", None)
    turns = getattr(getattr(call, "report", None), "turns", None) or []
    last = turns[-1] if turns else None
    return LiveCallOut(
        session_id=session_id, agent_id=info.agent_id, agent_version=info.agent_version,
        direction=info.direction, from_number=info.from_number, to_number=info.to_number,
        started_at=datetime.now(UTC) - timedelta(seconds=duration),
        duration_s=round(duration, 1),
        state=str(getattr(conversation, "state", "starting")),
        last_line=LiveLine(role=str(last.get("role")), text=str(last.get("text") or ""))
        if last else None,
        playground=bool(info.metadata.get("playground")),
    )


@router.get("/live-calls", response_model=LiveCallList)
async def live_calls(state: State) -> LiveCallList:
    """Calls hosted by this replica, oldest first."""
    live = getattr(state.calls, "live", None)
    if not isinstance(live, LiveCalls):
        return LiveCallList(items=[])
    now = time.monotonic()
    items = [d for sid in live.session_ids() if (d := _describe(sid, live.get(sid), now))]
    items.sort(key=lambda c: c.started_at)
    return LiveCallList(items=items)
