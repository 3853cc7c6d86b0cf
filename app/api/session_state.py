"""`GET/PATCH /v1/sessions/{id}/state`: the call's key/value state.

GET returns the state object. PATCH takes a JSON merge patch (RFC 7396; `application/json` or
`application/merge-patch+json`): keys are set, nested objects merged, `null` deletes. Tools see
the change on their next call (and webhook tool requests carry the state). Keys starting with `_`
are reserved for the server.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request

from app.api.deps import State
from app.api.openapi import object_body
from app.api.problems import ApiProblem, not_found, problems, unprocessable
from app.bus.control import tell_owner_state_changed
from app.calls.state_store import SessionNotFound, StateError, shared_state_store

router = APIRouter(prefix="/sessions", tags=["sessions"])


@router.get("/{session_id}/state", response_model=dict[str, Any], responses=problems(404))
async def get_state(session_id: str, state: State) -> dict[str, Any]:
    try:
        return await shared_state_store(state).get(session_id)
    except SessionNotFound:
        raise not_found("session", session_id) from None


@router.patch(
    "/{session_id}/state",
    response_model=dict[str, Any],
    responses=problems(404, 413),
    openapi_extra=object_body(
        "JSON Merge Patch (RFC 7396): keys are set, objects merged, null deletes",
        media_types=("application/merge-patch+json", "application/json")),
)
async def patch_state(session_id: str, request: Request, state: State) -> dict[str, Any]:
    try:
        patch = json.loads(await request.body() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise unprocessable([{"field": "body", "message": f"invalid JSON: {exc}"}]) from None
    if not isinstance(patch, dict):
        raise unprocessable([{"field": "body", "message": "a merge patch must be a JSON object"}])
    try:
        new_state = await shared_state_store(state).patch(session_id, patch)
    except SessionNotFound:
        raise not_found("session", session_id) from None
    except StateError as exc:
        if exc.field is not None:
            raise unprocessable([{"field": exc.field, "message": str(exc)}]) from None
        raise ApiProblem(413, str(exc)) from None
    await tell_owner_state_changed(state, session_id)
    return new_state
