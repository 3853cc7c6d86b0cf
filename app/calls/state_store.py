"""Per-call key/value state, kept in `sessions.state`, changed by JSON merge patch (RFC 7396).

The database row is the source of truth so any replica (and the REST API) sees the same state;
when the call is hosted in this process its live `CallControl.state` dict is updated in place
after each committed patch, so tools running in the call see changes made over REST.

Keys starting with `_` are reserved for the server (e.g. `_transfer`, the pending transfer
target); REST and webhook patches cannot change them.
"""

from __future__ import annotations

import asyncio
import copy
import json
import weakref
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.calls.registry import LiveCallLookup, live_calls
from app.db.models import Session
from app.merge_patch import apply_merge_patch
from app.tools.call_state import RESERVED_PREFIX, StateError, public_view

MAX_STATE_BYTES = 64 * 1024


class SessionNotFound(LookupError):
    pass


class SessionStateStore:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        live: LiveCallLookup | None = None,
        *,
        max_bytes: int = MAX_STATE_BYTES,
    ) -> None:
        self._sm = sessionmaker
        self.live = live
        self.max_bytes = max_bytes
        # Serialises read-modify-write per session inside this process; across replicas the
        # row lock (SELECT … FOR UPDATE, on Postgres) does the same.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def get(self, session_id: str, *, include_reserved: bool = False) -> dict[str, Any]:
        async with self._sm() as db:
            row = (await db.execute(
                select(Session.state).where(Session.id == session_id)
            )).first()
        if row is None:
            raise SessionNotFound(session_id)
        state = dict(row[0] or {})
        return state if include_reserved else public_view(state)

    async def patch(
        self, session_id: str, patch: dict[str, Any], *, allow_reserved: bool = False
    ) -> dict[str, Any]:
        """Apply a merge patch; return the new state (public view unless allow_reserved)."""
        if not isinstance(patch, dict):
            raise StateError("a state patch must be a JSON object")
        if not allow_reserved:
            for key in patch:
                if key.startswith(RESERVED_PREFIX):
                    raise StateError(f"keys starting with '{RESERVED_PREFIX}' are reserved",
                                     field=key)
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        async with lock:
            new_state = await self._apply(session_id, patch)
        control = self.live.get(session_id) if self.live is not None else None
        if control is not None:
            control.state.clear()
            control.state.update(copy.deepcopy(new_state))
        return new_state if allow_reserved else public_view(new_state)

    async def _apply(self, session_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        async with self._sm() as db, db.begin():
            row = (await db.execute(
                select(Session).where(Session.id == session_id).with_for_update()
            )).scalar_one_or_none()
            if row is None:
                raise SessionNotFound(session_id)
            new_state = apply_merge_patch(row.state or {}, patch)
            size = len(json.dumps(new_state, separators=(",", ":"), default=str))
            if size > self.max_bytes:
                raise StateError(f"state would be {size} bytes; the limit is {self.max_bytes}")
            row.state = new_state
        return new_state


_SHARED_KEY = "app.calls.state_store"


def shared_state_store(app_state: Any) -> SessionStateStore:
    """The process-wide store of an AppState (kept in `extras`), so every writer — REST, tools,
    transfers — shares its per-session locks and reaches live calls' state dicts."""
    store: SessionStateStore | None = app_state.extras.get(_SHARED_KEY)
    if store is None:
        store = app_state.extras[_SHARED_KEY] = SessionStateStore(app_state.db.sessionmaker)
    if store.live is None:
        # The call host fills state.calls at start-up; pick it up once it exists.
        store.live = live_calls(app_state)
    return store
