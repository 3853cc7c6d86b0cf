"""/v1/numbers: which agent answers which phone number (E.164)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from app.api.deps import DbSession, Offset
from app.api.problems import not_found, problems, unprocessable
from app.api.schemas import E164_PATTERN, NumberIn, NumberList, NumberOut
from app.db.repos import agents as agents_repo
from app.db.repos import numbers as numbers_repo

router = APIRouter(prefix="/numbers", tags=["numbers"])

Number = Annotated[
    str,
    Path(
        pattern=E164_PATTERN,
        description="E.164 number, e.g. +14155550100 (URL-encode + as %2B if your client "
        "turns it into a space)",
    ),
]


@router.put(
    "/{number}", response_model=NumberOut,
    responses={201: {"model": NumberOut, "description": "Created"}, **problems(409)},
)
async def put_number(number: Number, body: NumberIn, s: DbSession, response: Response) -> NumberOut:
    """Map a number to an agent (201 when new, 200 when remapped)."""
    if await agents_repo.get(s, body.agent_id) is None:
        raise unprocessable(
            [{"field": "agent_id", "message": f"agent '{body.agent_id}' does not exist"}]
        )
    row, created = await numbers_repo.put(s, number, body.agent_id)
    await s.commit()
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return NumberOut.model_validate(row)


@router.get("", response_model=NumberList)
async def list_numbers(
    s: DbSession,
    agent_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> NumberList:
    rows = await numbers_repo.list_numbers(s, agent_id=agent_id, limit=limit, offset=offset)
    return NumberList(items=[NumberOut.model_validate(r) for r in rows])


@router.get("/{number}", response_model=NumberOut, responses=problems(404))
async def get_number(number: Number, s: DbSession) -> NumberOut:
    row = await numbers_repo.get(s, number)
    if row is None:
        raise not_found("number", number)
    return NumberOut.model_validate(row)


@router.delete("/{number}", status_code=status.HTTP_204_NO_CONTENT, responses=problems(404))
async def delete_number(number: Number, s: DbSession) -> Response:
    if not await numbers_repo.delete(s, number):
        raise not_found("number", number)
    await s.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
