"""The URLs a transfer's legs fetch from us (signed by Plivo, like every callback).

- `/plivo/transfer/{sid}`: the caller's leg, once our stream has ended. Cold: `<Dial>` the
  targets (all at once, or the first with `/next` as the dial's action URL to try the others in
  turn). Warm: join the conference where the target who took the call waits.
- `/plivo/transfer/{sid}/next?i=N`: a sequential cold dial ended; ring target N unless the
  last one answered.
- `/plivo/consult/{sid}/answer | join | hangup`: a warm transfer's consult leg. On answer the
  target hears the brief, then is redirected to `join`, which tells the call (here or on its
  owner, through the bus) that the target is ready and puts them in the conference. Its hangup
  URL reports a leg that never answered, was busy, or hung up; after the bridge it is the
  transfer's last event (`participant.removed`).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.bus.control import Delivery, route_consult_progress
from app.calls.state_store import SessionNotFound, SessionStateStore
from app.calls.transfer import PendingTransfer, load_pending_transfer
from app.state import AppState, State
from app.telephony.plivo import xml as pxml
from app.telephony.plivo.edge import get_edge
from app.telephony.plivo.routes import (
    check_signature,
    normalize_number,
    request_params,
    xml_response,
)
from app.telephony.plivo.transfers import consult_url
from pipelines import events as ev
from pipelines.outcomes import ConsultProgress

log = logging.getLogger(__name__)

router = APIRouter(prefix="/plivo", tags=["plivo"], include_in_schema=False)

TRANSFER_FAILED_APOLOGY = "Sorry, I could not transfer your call. Goodbye."
NOBODY_ANSWERED_APOLOGY = "Sorry, nobody could take your call right now. Goodbye."
CALLER_GONE = "Sorry, the caller is no longer on the line. Goodbye."
DEFAULT_BRIEF = "You have a transferred call."


async def _pending(state: AppState, session_id: str) -> PendingTransfer | None:
    try:
        return await load_pending_transfer(SessionStateStore(state.db.sessionmaker), session_id)
    except SessionNotFound:
        return None


async def _signed(request: Request, state: AppState) -> tuple[Response | None, dict[str, str]]:
    """(the refusal to return when the request is not Plivo's, the request's parameters)."""
    signed, flat = await request_params(request)
    return check_signature(request, state, get_edge(state), signed), flat


def _next_url(public_url: str, session_id: str, index: int) -> str:
    return f"{public_url.rstrip('/')}/plivo/transfer/{session_id}/next?i={index}"


def _cold_dial(pending: PendingTransfer, public_url: str, session_id: str, index: int) -> str:
    """Ring target `index` (sequential) or all of them (parallel). When nobody answers, the
    dial's action URL rings the next one, or, with none left, tells the caller before hanging
    up rather than leaving them in silence."""
    if pending.dial_mode == "parallel":
        return pxml.dial_response(pending.targets, timeout_s=pending.ring_timeout_s,
                                  action_url=_next_url(public_url, session_id,
                                                       len(pending.targets)))
    return pxml.dial_response([pending.targets[index]], timeout_s=pending.ring_timeout_s,
                              action_url=_next_url(public_url, session_id, index + 1))


@router.api_route("/transfer/{session_id}", methods=["GET", "POST"])
async def transfer(session_id: str, request: Request, state: State) -> Response:
    """The XML the caller's leg runs once a transfer has ended our stream."""
    refused, _ = await _signed(request, state)
    if refused is not None:
        return refused
    pending = await _pending(state, session_id)
    if pending is None:
        log.warning("transfer XML requested for session %s with no pending transfer",
                    session_id)
        return xml_response(pxml.apology_response(TRANSFER_FAILED_APOLOGY))
    if pending.conference:
        log.info("session %s: caller joins the warm transfer's conference", session_id)
        return xml_response(pxml.conference_response(pending.conference))
    try:
        doc = _cold_dial(pending, get_edge(state).public_url, session_id, 0)
    except ValueError as exc:
        log.warning("session %s: bad transfer target: %s", session_id, exc)
        return xml_response(pxml.apology_response(TRANSFER_FAILED_APOLOGY))
    log.info("session %s: transferring to %s (%s)", session_id, ", ".join(pending.targets),
             pending.dial_mode)
    return xml_response(doc)


@router.api_route("/transfer/{session_id}/next", methods=["GET", "POST"])
async def transfer_next(session_id: str, request: Request, state: State) -> Response:
    """A sequential cold transfer's dial ended: ring the next target unless it was taken."""
    refused, params = await _signed(request, state)
    if refused is not None:
        return refused
    status = params.get("DialStatus", "").lower()
    if status == "completed":
        return xml_response(pxml.hangup_response())  # they talked; the call is over
    pending = await _pending(state, session_id)
    try:
        index = int(params.get("i", ""))
    except ValueError:
        index = -1
    if pending is None or not 0 <= index < len(pending.targets):
        log.info("session %s: nobody took the transfer (%s)", session_id, status or "unknown")
        return xml_response(pxml.apology_response(NOBODY_ANSWERED_APOLOGY))
    log.info("session %s: transfer target %d did not answer (%s); trying the next", session_id,
             index, status or "unknown")
    return xml_response(_cold_dial(pending, get_edge(state).public_url, session_id, index))


def _leg(params: dict[str, Any]) -> str:
    # Plivo reports a call placed through its API with the request UUID it answered with;
    # that UUID becomes the call's.
    return str(params.get("leg") or params.get("RequestUUID") or params.get("CallUUID") or "")


async def _consult_step(session_id: str, request: Request, state: AppState,
                        progress: ConsultProgress) -> Response | tuple[PendingTransfer, str]:
    """Tell the call what its consult leg did. Either the answer to give instead (the request
    is not Plivo's, or the call no longer waits for this leg), or the stored transfer and the
    leg."""
    refused, params = await _signed(request, state)
    if refused is not None:
        return refused
    leg = _leg(params)
    pending = await _pending(state, session_id)
    if pending is None or not pending.conference or not leg:
        return xml_response(pxml.apology_response(CALLER_GONE))
    taken = await route_consult_progress(state, session_id, leg, progress)
    if taken is not Delivery.DELIVERED:
        return xml_response(pxml.apology_response(CALLER_GONE))
    return pending, leg


@router.api_route("/consult/{session_id}/answer", methods=["GET", "POST"])
async def consult_answer(session_id: str, request: Request, state: State) -> Response:
    """A warm-transfer target picked up: they hear the brief, then go on to `join`."""
    step = await _consult_step(session_id, request, state, ConsultProgress.ANSWERED)
    if isinstance(step, Response):
        return step
    pending, leg = step
    join = consult_url(get_edge(state).public_url, session_id, "join") + f"?leg={leg}"
    return xml_response(pxml.brief_then_redirect(pending.brief or DEFAULT_BRIEF, join))


@router.api_route("/consult/{session_id}/join", methods=["GET", "POST"])
async def consult_join(session_id: str, request: Request, state: State) -> Response:
    """The target heard the brief: the call bridges the caller in; the target waits there."""
    step = await _consult_step(session_id, request, state, ConsultProgress.READY)
    if isinstance(step, Response):
        return step
    pending, _ = step
    return xml_response(pxml.conference_response(pending.conference))


@router.api_route("/consult/{session_id}/hangup", methods=["GET", "POST"])
async def consult_hangup(session_id: str, request: Request, state: State) -> Response:
    """A consult leg ended: not answered, busy, refused, or hung up (before or after the
    bridge)."""
    refused, params = await _signed(request, state)
    if refused is not None:
        return refused
    leg = _leg(params)
    status = (params.get("CallStatus") or params.get("HangupCause") or "").lower()
    if not leg:
        return Response(status_code=200)
    taken = await route_consult_progress(state, session_id, leg, ConsultProgress.ENDED, status)
    if taken is Delivery.NO_CALL:
        pending = await _pending(state, session_id)
        if pending is not None and pending.bridged_leg == leg and state.events is not None:
            # The call is over on our side; the person it was handed to has now left too.
            who = normalize_number(params.get("To", "")) or params.get("To", "")
            state.events.publish(ev.ParticipantRemoved(
                session_id=session_id, participant=who, leg_id=leg, reason="hung_up"))
    return Response(status_code=200)
