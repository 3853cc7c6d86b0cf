"""/v1/api-keys: create (secret shown once), list, revoke."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.api.deps import DbSession
from app.api.problems import not_found, problems
from app.api.schemas import ApiKeyCreated, ApiKeyIn, ApiKeyList, ApiKeyOut
from app.db.repos import api_keys as api_keys_repo

router = APIRouter(prefix="/api-keys", tags=["api keys"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated)
async def create_key(body: ApiKeyIn, s: DbSession) -> ApiKeyCreated:
    """Create a key. The `secret` in this response is the only time it is shown."""
    row, secret = await api_keys_repo.create(s, body.name)
    await s.commit()
    return ApiKeyCreated(**ApiKeyOut.model_validate(row).model_dump(), secret=secret)


@router.get("", response_model=ApiKeyList)
async def list_keys(s: DbSession) -> ApiKeyList:
    return ApiKeyList(items=[ApiKeyOut.model_validate(r) for r in await api_keys_repo.list_keys(s)])


@router.get("/{key_id}", response_model=ApiKeyOut, responses=problems(404))
async def get_key(key_id: str, s: DbSession) -> ApiKeyOut:
    row = await api_keys_repo.get(s, key_id)
    if row is None:
        raise not_found("api key", key_id)
    return ApiKeyOut.model_validate(row)


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT, responses=problems(404))
async def revoke_key(key_id: str, s: DbSession) -> Response:
    """Revoke a key: it stops working immediately and stays listed with `revoked_at`."""
    if await api_keys_repo.revoke(s, key_id) is None:
        raise not_found("api key", key_id)
    await s.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
