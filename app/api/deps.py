"""Dependencies shared by the routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.state import AppState


def app_state(request: Request) -> AppState:
    return request.app.state.pb  # type: ignore[no-any-return]


async def db_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session per request. Routes that write call `await session.commit()` themselves, so
    the commit happens before the response is sent."""
    async with app_state(request).db.sessionmaker() as s:
        yield s


State = Annotated[AppState, Depends(app_state)]
DbSession = Annotated[AsyncSession, Depends(db_session)]
