"""/v1/credentials: write-only secrets that provider configs reference by name.

Values are encrypted with the server's secret key before they touch the database and are never
returned or logged; listings show names and timestamps only.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from app.api.deps import DbSession, State
from app.api.problems import not_found, problems
from app.api.schemas import CREDENTIAL_NAME_PATTERN, CredentialIn, CredentialList, CredentialOut
from app.db.repos import credentials as credentials_repo
from app.logging_setup import register_secret

router = APIRouter(prefix="/credentials", tags=["credentials"])

Name = Annotated[str, Path(pattern=CREDENTIAL_NAME_PATTERN)]


@router.put(
    "/{name}", response_model=CredentialOut,
    responses={201: {"model": CredentialOut, "description": "Created"}, **problems(409)},
)
async def put_credential(
    name: Name, body: CredentialIn, state: State, s: DbSession, response: Response
) -> CredentialOut:
    """Store or replace a credential (201 when new, 200 when replaced)."""
    value = body.value.get_secret_value()
    register_secret(value)
    row, created = await credentials_repo.put(s, name, state.crypto.encrypt(value))
    await s.commit()
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return CredentialOut.model_validate(row)


@router.get("", response_model=CredentialList)
async def list_credentials(s: DbSession) -> CredentialList:
    rows = await credentials_repo.list_credentials(s)
    return CredentialList(items=[CredentialOut.model_validate(r) for r in rows])


@router.get("/{name}", response_model=CredentialOut, responses=problems(404))
async def get_credential(name: Name, s: DbSession) -> CredentialOut:
    """Metadata only; the value is never returned."""
    row = await credentials_repo.get(s, name)
    if row is None:
        raise not_found("credential", name)
    return CredentialOut.model_validate(row)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=problems(404))
async def delete_credential(name: Name, s: DbSession) -> Response:
    if not await credentials_repo.delete(s, name):
        raise not_found("credential", name)
    await s.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
