"""Usage records (tokens, audio seconds, characters ...) and their aggregates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from sqlalchemy import Date, SQLColumnExpression, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from app.db.models import UsageRecord

GroupBy = Literal["agent", "provider", "day", "kind"]
GROUP_BY: tuple[GroupBy, ...] = ("agent", "provider", "day", "kind")


@dataclass
class UsageRow:
    key: str | None  # agent id, provider name, ISO day or kind
    kind: str | None  # set when grouping by provider (the same vendor may serve several kinds)
    metric: str
    quantity: float
    records: int


async def record(
    s: AsyncSession,
    *,
    kind: str,
    provider: str,
    metric: str,
    quantity: float,
    model: str = "",
    session_id: str | None = None,
    agent_id: str | None = None,
    created_at: datetime | None = None,
) -> UsageRecord:
    fields: dict[str, Any] = {}
    if created_at is not None:
        fields["created_at"] = created_at
    row = UsageRecord(
        kind=kind, provider=provider, metric=metric, quantity=float(quantity), model=model,
        session_id=session_id, agent_id=agent_id, **fields,
    )
    s.add(row)
    await s.flush()
    return row


async def for_session(s: AsyncSession, session_id: str) -> list[UsageRecord]:
    stmt = (
        select(UsageRecord)
        .where(UsageRecord.session_id == session_id)
        .order_by(UsageRecord.created_at, UsageRecord.id)
    )
    return list((await s.execute(stmt)).scalars())


def _day(dialect: str) -> ColumnElement[Any]:
    if dialect == "sqlite":
        # Stored as "YYYY-MM-DD HH:MM:SS..." in UTC; date() takes the day part.
        return func.date(UsageRecord.created_at)
    # timestamptz -> UTC wall clock -> date, so days don't depend on the server's TimeZone.
    return cast(func.timezone("UTC", UsageRecord.created_at), Date)


async def aggregate(
    s: AsyncSession,
    group_by: GroupBy,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    agent_id: str | None = None,
) -> list[UsageRow]:
    """Sum quantities per group and metric (different metrics are never added together)."""
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}")
    dialect = s.get_bind().dialect.name
    # A mapped column or a computed day: both are column expressions.
    key: SQLColumnExpression[Any]
    kind_col: SQLColumnExpression[Any] | None = None
    if group_by == "agent":
        key = UsageRecord.agent_id
    elif group_by == "provider":
        key = UsageRecord.provider
        kind_col = UsageRecord.kind
    elif group_by == "kind":
        key = UsageRecord.kind
    else:
        key = _day(dialect)
    exprs: list[SQLColumnExpression[Any]] = [key] if kind_col is None else [key, kind_col]
    labelled = [key.label("key")] + ([] if kind_col is None else [kind_col.label("kind")])
    stmt = select(
        *labelled,
        UsageRecord.metric,
        func.sum(UsageRecord.quantity).label("quantity"),
        func.count().label("records"),
    )
    if since is not None:
        stmt = stmt.where(UsageRecord.created_at >= since)
    if until is not None:
        stmt = stmt.where(UsageRecord.created_at < until)
    if agent_id is not None:
        stmt = stmt.where(UsageRecord.agent_id == agent_id)
    stmt = stmt.group_by(*exprs, UsageRecord.metric).order_by(*exprs, UsageRecord.metric)
    out: list[UsageRow] = []
    for r in (await s.execute(stmt)).all():
        k = r.key
        if isinstance(k, date | datetime):
            k = k.isoformat()[:10]
        out.append(
            UsageRow(
                key=None if k is None else str(k),
                kind=getattr(r, "kind", None) if kind_col is not None else None,
                metric=r.metric,
                quantity=float(r.quantity or 0.0),
                records=int(r.records),
            )
        )
    return out
