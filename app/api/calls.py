"""`POST /v1/calls`: place an outbound call that an agent handles.

The session is created at once (status `ringing`, direction `outbound`) and pinned to the
agent's current version, so later edits to the agent do not change a call in flight. Plivo then
dials `to`; when answered it fetches our answer URL with `?session_id=`, which returns the
`<Stream>` XML for this session.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import State
from app.api.problems import ApiProblem, problem_doc, problems, unprocessable
from app.calls.voicemail import DETECT_KEY
from app.db.models import new_id
from app.db.repos import agents as agents_repo
from app.db.repos import sessions as sessions_repo
from app.telephony.plivo.edge import get_edge
from app.telephony.plivo.rest import PlivoApiError

log = logging.getLogger(__name__)

router = APIRouter(prefix="/calls", tags=["calls"])

_NUMBER = r"^\+?[1-9][0-9]{1,14}$"
_TO = r"^(\+?[1-9][0-9]{1,14}|sips?:[^\s@]+@[^\s@]+)$"
# Extra time beyond ringing for the answer + stream connect before the slot is given back.
_ANSWER_SLACK_S = 60


class VoicemailRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    detect: bool = Field(False, description=(
        "Classify the callee as human or answering machine before the agent speaks; on a "
        "machine, follow the agent's `voicemail` settings (leave `message` or hang up)."))


class OutboundCallIn(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")
    agent_id: str = Field(min_length=1)
    to: str = Field(pattern=_TO, description="E.164 number or sip: URI to call")
    from_: str = Field(alias="from", pattern=_NUMBER,
                       description="Caller ID: a number on your Plivo account (E.164)")
    metadata: dict[str, Any] = Field(default_factory=dict)
    ring_timeout_s: int = Field(60, ge=5, le=300)
    voicemail: VoicemailRequest = Field(default_factory=VoicemailRequest)


class OutboundCallOut(BaseModel):
    session_id: str
    request_uuid: str
    agent_id: str
    agent_version: int
    status: str


def _plivo_number(n: str) -> str:
    # Plivo's examples write numbers as digits with country code and no '+'.
    return n if n.lower().startswith(("sip:", "sips:")) else re.sub(r"^\+", "", n)


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=OutboundCallOut,
    responses={**problems(502), 503: {
        **problem_doc(503, "Outbound calling is not configured, or no call slot is free"),
        "headers": {"Retry-After": {"description": "Seconds to wait (when at capacity)",
                                    "schema": {"type": "integer"}}},
    }},
)
async def make_call(body: OutboundCallIn, state: State) -> OutboundCallOut:
    """Dial `to` from `from`; the agent talks once the callee answers."""
    edge = get_edge(state)
    if not edge.rest.configured:
        raise ApiProblem(503, "outbound calls need plivo.auth_id and plivo.auth_token")
    async with state.db.transaction() as s:
        agent = await agents_repo.get(s, body.agent_id)
        if agent is None:
            raise unprocessable([{"field": "agent_id",
                                  "message": f"agent '{body.agent_id}' does not exist"}])
        version = agent.current_version
    session_id = new_id()
    metadata = dict(body.metadata)
    if body.voicemail.detect:
        # Read back by the call host (app.calls.voicemail) when the callee answers.
        metadata[DETECT_KEY] = body.voicemail.model_dump()
    if state.draining or not await edge.admission.admit(
            session_id, ttl_s=body.ring_timeout_s + _ANSWER_SLACK_S):
        raise ApiProblem(503, "at capacity: no call slot free (limits.max_concurrent_calls)",
                         headers={"Retry-After": "5"})
    try:
        # Committed before dialling: Plivo may fetch the answer URL before make_call returns.
        async with state.db.transaction() as s:
            await sessions_repo.create(
                s, id=session_id, agent_id=body.agent_id, agent_version=version,
                direction="outbound", from_number=body.from_, to_number=body.to,
                status="ringing", metadata_=metadata)
        result = await edge.rest.make_call(
            from_=_plivo_number(body.from_), to=_plivo_number(body.to),
            answer_url=edge.url("/plivo/answer", {"session_id": session_id}),
            hangup_url=edge.url("/plivo/hangup", {"session_id": session_id}),
            ring_timeout=body.ring_timeout_s,
            time_limit=int(state.settings.limits.max_call_duration_s),
        )
    except PlivoApiError as exc:
        edge.admission.release(session_id)
        async with state.db.transaction() as s:
            await sessions_repo.end(s, session_id, status="failed", end_reason="dial_failed")
        log.warning("outbound call for session %s failed: %s", session_id, exc)
        raise ApiProblem(502, f"Plivo refused the call: {exc}") from None
    except BaseException:
        edge.admission.release(session_id)
        raise
    request_uuid = str(result["request_uuid"])
    async with state.db.transaction() as s:
        await sessions_repo.update_fields(s, session_id, request_uuid=request_uuid)
    log.info("outbound call %s → %s placed for agent %s v%d (session %s, request %s)",
             body.from_, body.to, body.agent_id, version, session_id, request_uuid)
    return OutboundCallOut(session_id=session_id, request_uuid=request_uuid,
                           agent_id=body.agent_id, agent_version=version, status="ringing")
