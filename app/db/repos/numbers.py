"""Phone numbers (E.164) mapped to agents."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Agent, AgentVersion, PhoneNumber, utcnow


async def put(s: AsyncSession, number: str, agent_id: str) -> tuple[PhoneNumber, bool]:
    """Map `number` to `agent_id`; returns (row, created)."""
    row = await s.get(PhoneNumber, number)
    if row is None:
        row = PhoneNumber(number=number, agent_id=agent_id)
        s.add(row)
        await s.flush()
        return row, True
    row.agent_id = agent_id
    row.updated_at = utcnow()
    await s.flush()
    return row, False


async def get(s: AsyncSession, number: str) -> PhoneNumber | None:
    return await s.get(PhoneNumber, number)


async def list_numbers(
    s: AsyncSession, *, agent_id: str | None = None, limit: int = 100, offset: int = 0
) -> list[PhoneNumber]:
    stmt = select(PhoneNumber).order_by(PhoneNumber.number).limit(limit).offset(offset)
    if agent_id is not None:
        stmt = stmt.where(PhoneNumber.agent_id == agent_id)
    return list((await s.execute(stmt)).scalars())


async def delete(s: AsyncSession, number: str) -> bool:
    row = await s.get(PhoneNumber, number)
    if row is None:
        return False
    await s.delete(row)
    await s.flush()
    return True


async def agent_for_number(s: AsyncSession, number: str) -> tuple[Agent, AgentVersion] | None:
    """The live agent a call to `number` should reach, with its current config version."""
    stmt = (
        select(Agent, AgentVersion)
        .join(PhoneNumber, PhoneNumber.agent_id == Agent.id)
        .join(
            AgentVersion,
            (AgentVersion.agent_id == Agent.id)
            & (AgentVersion.version == Agent.current_version),
        )
        .where(PhoneNumber.number == number, Agent.deleted_at.is_(None))
    )
    row = (await s.execute(stmt)).first()
    return (row[0], row[1]) if row else None
