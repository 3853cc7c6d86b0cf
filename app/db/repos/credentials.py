"""Stored credentials. Only ciphertext lives here; `app.security.crypto` encrypts/decrypts."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Credential, utcnow


async def put(s: AsyncSession, name: str, ciphertext: bytes) -> tuple[Credential, bool]:
    """Create or replace; returns (row, created)."""
    row = await s.get(Credential, name)
    if row is None:
        row = Credential(name=name, ciphertext=ciphertext)
        s.add(row)
        await s.flush()
        return row, True
    row.ciphertext = ciphertext
    row.updated_at = utcnow()
    await s.flush()
    return row, False


async def get(s: AsyncSession, name: str) -> Credential | None:
    return await s.get(Credential, name)


async def list_credentials(s: AsyncSession) -> list[Credential]:
    return list((await s.execute(select(Credential).order_by(Credential.name))).scalars())


async def existing_names(s: AsyncSession, names: Iterable[str]) -> set[str]:
    wanted = set(names)
    if not wanted:
        return set()
    stmt = select(Credential.name).where(Credential.name.in_(wanted))
    return set((await s.execute(stmt)).scalars())


async def delete(s: AsyncSession, name: str) -> bool:
    row = await s.get(Credential, name)
    if row is None:
        return False
    await s.delete(row)
    await s.flush()
    return True
