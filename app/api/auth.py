"""Bearer API-key authentication for /v1.

Accepted: keys stored (hashed) in the database and not revoked, and the bootstrap
`security.admin_api_key`. Comparisons are constant-time; failures never say which part was wrong.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api.problems import ApiProblem
from app.db.repos import api_keys as api_keys_repo
from app.security import api_keys as keyfmt
from app.state import AppState

log = logging.getLogger(__name__)

bearer_scheme = HTTPBearer(
    auto_error=False,
    description="An API key (`pb_...`) from `phonebooth keys create` or POST /v1/api-keys, "
    "or the configured security.admin_api_key.",
)


@dataclass(frozen=True)
class Principal:
    kind: Literal["admin", "key"]
    key_id: str | None = None


def _unauthorized(detail: str) -> ApiProblem:
    return ApiProblem(401, detail, headers={"WWW-Authenticate": 'Bearer realm="phonebooth"'})


async def authenticate(state: AppState, token: str) -> Principal | None:
    """The principal for a bearer token, or None. Usable from WebSocket handlers too."""
    if not token:
        return None
    admin = state.settings.security.admin_api_key
    if admin is not None and admin.get_secret_value():
        if keyfmt.matches(token, admin.get_secret_value()):
            return Principal("admin")
    if not token.startswith(keyfmt.KEY_PREFIX):
        return None
    async with state.db.sessionmaker() as s:
        row = await api_keys_repo.find_active(s, token)
        if row is None:
            return None
        if await api_keys_repo.touch(s, row):
            await s.commit()
        return Principal("key", row.id)


async def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("missing bearer API key")
    principal = await authenticate(request.app.state.pb, credentials.credentials)
    if principal is None:
        raise _unauthorized("invalid or revoked API key")
    request.state.principal = principal
    return principal


Authenticated = Annotated[Principal, Depends(require_api_key)]
