"""API keys: stored hashed, shown once, revocable."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import ApiKey, utcnow
from app.security import api_keys as keyfmt

# Don't write last_used_at on every request; once a minute is enough to be useful.
TOUCH_INTERVAL = timedelta(seconds=60)


async def create(s: AsyncSession, name: str = "") -> tuple[ApiKey, str]:
    """Returns (row, secret). The secret is not stored and cannot be shown again."""
    secret = keyfmt.generate()
    row = ApiKey(name=name, prefix=keyfmt.display_prefix(secret), key_hash=keyfmt.hash_key(secret))
    s.add(row)
    await s.flush()
    return row, secret


async def find_active(s: AsyncSession, secret: str) -> ApiKey | None:
    """The non-revoked key whose hash matches `secret`, or None."""
    digest = keyfmt.hash_key(secret)
    row = (await s.execute(select(ApiKey).where(ApiKey.key_hash == digest))).scalar_one_or_none()
    # The index lookup found it by hash; compare again in constant time so timing doesn't
    # depend on how much of the hash matched at the database layer.
    if row is None or not keyfmt.matches(row.key_hash, digest) or row.revoked_at is not None:
        return None
    return row


async def touch(s: AsyncSession, row: ApiKey) -> bool:
    now = utcnow()
    if row.last_used_at is not None and now - row.last_used_at < TOUCH_INTERVAL:
        return False
    row.last_used_at = now
    await s.flush()
    return True


async def get(s: AsyncSession, key_id: str) -> ApiKey | None:
    return await s.get(ApiKey, key_id)


async def list_keys(s: AsyncSession, *, include_revoked: bool = True) -> list[ApiKey]:
    stmt = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if not include_revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    return list((await s.execute(stmt)).scalars())


async def revoke(s: AsyncSession, key_id: str) -> ApiKey | None:
    row = await s.get(ApiKey, key_id)
    if row is None:
        return None
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        await s.flush()
    return row
