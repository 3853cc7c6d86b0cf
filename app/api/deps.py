"""Dependencies shared by the routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession

# State lives beside AppState so the carrier's callbacks can use it without importing the API.
from app.state import State, app_state

__all__ = ["DbSession", "State", "app_state", "db_session"]


async def db_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session per request. Routes that write call `await session.commit()` themselves, so
    the commit happens before the response is sent."""
    async with app_state(request).db.sessionmaker() as s:
        yield s


DbSession = Annotated[AsyncSession, Depends(db_session)]
# Bounded so the database never sees an integer it cannot store (a 500 otherwise).
Offset = Annotated[int, Query(ge=0, le=2**31 - 1, description="Items to skip")]
