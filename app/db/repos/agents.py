"""Agents and their immutable config versions."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Agent, AgentVersion, new_id, utcnow


async def create(
    s: AsyncSession, config: dict[str, Any], *, agent_id: str | None = None
) -> tuple[Agent, AgentVersion]:
    """Insert an agent with `config` as version 1."""
    agent = Agent(id=agent_id or new_id(), name=str(config.get("name", "")), current_version=1)
    s.add(agent)
    await s.flush()
    version = AgentVersion(agent_id=agent.id, version=1, config=config)
    s.add(version)
    await s.flush()
    return agent, version


async def get(s: AsyncSession, agent_id: str, *, include_deleted: bool = False) -> Agent | None:
    agent = await s.get(Agent, agent_id)
    if agent is None or (agent.deleted_at is not None and not include_deleted):
        return None
    return agent


async def get_for_update(s: AsyncSession, agent_id: str) -> Agent | None:
    """Like `get`, but locks the row (Postgres) so concurrent edits serialise."""
    stmt = select(Agent).where(Agent.id == agent_id, Agent.deleted_at.is_(None)).with_for_update()
    return (await s.execute(stmt)).scalar_one_or_none()


async def list_agents(s: AsyncSession, *, limit: int = 100, offset: int = 0) -> list[Agent]:
    stmt = (
        select(Agent)
        .where(Agent.deleted_at.is_(None))
        .order_by(Agent.created_at, Agent.id)
        .limit(limit)
        .offset(offset)
    )
    return list((await s.execute(stmt)).scalars())


async def count(s: AsyncSession, *, include_deleted: bool = True) -> int:
    stmt = select(func.count()).select_from(Agent)
    if not include_deleted:
        stmt = stmt.where(Agent.deleted_at.is_(None))
    return int((await s.execute(stmt)).scalar_one())


async def add_version(s: AsyncSession, agent: Agent, config: dict[str, Any]) -> AgentVersion:
    """Append a new immutable version and make it current. Earlier versions are never touched."""
    number = agent.current_version + 1
    version = AgentVersion(agent_id=agent.id, version=number, config=config)
    s.add(version)
    agent.current_version = number
    agent.name = str(config.get("name", agent.name))
    agent.updated_at = utcnow()
    await s.flush()
    return version


async def get_version(s: AsyncSession, agent_id: str, version: int) -> AgentVersion | None:
    stmt = select(AgentVersion).where(
        AgentVersion.agent_id == agent_id, AgentVersion.version == version
    )
    return (await s.execute(stmt)).scalar_one_or_none()


async def current_version(s: AsyncSession, agent: Agent) -> AgentVersion:
    v = await get_version(s, agent.id, agent.current_version)
    if v is None:  # the two rows are written in one transaction; this means manual tampering
        raise LookupError(f"agent {agent.id} has no version {agent.current_version}")
    return v


async def list_versions(s: AsyncSession, agent_id: str) -> list[AgentVersion]:
    stmt = (
        select(AgentVersion)
        .where(AgentVersion.agent_id == agent_id)
        .order_by(AgentVersion.version)
    )
    return list((await s.execute(stmt)).scalars())


async def soft_delete(s: AsyncSession, agent: Agent) -> None:
    """Hide the agent; its versions stay so past sessions keep their config."""
    agent.deleted_at = utcnow()
    await s.flush()
