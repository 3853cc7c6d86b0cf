"""/v1/usage: metered usage aggregated by agent, provider, day or kind."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter

from app.api.deps import DbSession
from app.api.schemas import UsageItem, UsageReport
from app.api.timeparams import From, To, as_utc
from app.db.repos import usage as usage_repo

router = APIRouter(prefix="/usage", tags=["usage"])


@router.get("", response_model=UsageReport)
async def get_usage(
    s: DbSession,
    group_by: Literal["agent", "provider", "day", "kind"] = "agent",
    since: From = None,
    until: To = None,
    agent_id: str | None = None,
) -> UsageReport:
    """Sum of each metric (tokens, audio seconds, characters ...) per group in [from, to)."""
    since, until = as_utc(since), as_utc(until)
    rows = await usage_repo.aggregate(s, group_by, since=since, until=until, agent_id=agent_id)
    return UsageReport(
        group_by=group_by, from_=since, to=until,
        items=[UsageItem(key=r.key, kind=r.kind, metric=r.metric, quantity=r.quantity,
                         records=r.records) for r in rows],
    )
