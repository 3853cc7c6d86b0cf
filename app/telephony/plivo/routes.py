"""Plivo's HTTP and WebSocket entry points (`/plivo/...`, no API key: Plivo signs instead).

- `GET|POST /plivo/answer`: the answer URL. Verifies the V3 signature over the exact public URL
  Plivo called, finds the agent (by `To`, or `?agent=`; outbound calls carry `?session_id=`),
  creates the session pinned to the agent's current version and returns the `<Stream>` XML.
  An unknown number gets a spoken apology, a full server a busy hangup: never a 500.
- `POST /plivo/hangup`, `POST /plivo/stream-status`: signed, idempotent session updates.
- the transfer and warm-transfer consult URLs: app.telephony.plivo.transfer_routes.
- `WS /plivo/stream/{session_id}`: the audio stream (app.telephony.plivo.stream).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import PlainTextResponse, Response

from app import metrics
from app.bus.base import get_bus
from app.db.models import Session, new_id, utcnow
from app.db.repos import agents as agents_repo
from app.db.repos import numbers as numbers_repo
from app.db.repos import sessions as sessions_repo
from app.outbox.service import Outbox, is_outage
from app.outbox.sessions import PLIVO_HANGUP, SESSION_CREATE, create_session, iso, record_hangup
from app.state import AppState, State
from app.telephony.plivo import xml as pxml
from app.telephony.plivo.edge import PlivoEdge, get_edge
from app.telephony.plivo.offline import Route
from app.telephony.plivo.signature import verify_v3
from app.telephony.plivo.stream import serve_stream
from app.telephony.plivo.token import make_stream_token

log = logging.getLogger(__name__)

# Carrier callbacks, not part of the public API: kept out of the OpenAPI document.
router = APIRouter(prefix="/plivo", tags=["plivo"], include_in_schema=False)

MAX_FORM_BYTES = 64 * 1024
UNKNOWN_NUMBER_APOLOGY = "Sorry, this number is not in service. Goodbye."
UNAVAILABLE_APOLOGY = "Sorry, we cannot take your call right now. Please try again later."
# A database slower than this to answer Plivo is treated as away (Plivo's own answer timeout is
# a few seconds): the call is answered from the cache and its records go through the outbox.
DB_TIMEOUT_S = 2.0
# Normalised stream status events: Plivo documents two naming schemes.
STREAM_EVENTS = {
    "startstream": "started", "started": "started",
    "stopstream": "stopped", "stopped": "stopped",
    "droppedstream": "failed", "failed": "failed",
    "degradedstream": "degraded", "degraded": "degraded",
    "playedstream": "played", "clearedaudio": "cleared",
}


def xml_response(doc: str) -> Response:
    return Response(doc, media_type=pxml.XML_CONTENT_TYPE)


def normalize_number(raw: str) -> str | None:
    """Plivo's `To`/`From` ("14155550100", "+1 415…", "sip:1415…@host") as E.164, if it is one."""
    s = raw.strip()
    if s.lower().startswith(("sip:", "sips:")):
        s = s.split(":", 1)[1].split("@", 1)[0]
    digits = re.sub(r"[\s\-().]", "", s).lstrip("+")
    if not digits.isdigit() or not 2 <= len(digits) <= 15 or digits.startswith("0"):
        return None
    return "+" + digits


async def request_params(request: Request) -> tuple[dict[str, list[str]] | None, dict[str, str]]:
    """(params covered by the signature's body part, all params flattened to first values)."""
    flat: dict[str, str] = dict(request.query_params)
    if request.method == "GET":
        return None, flat
    # Plivo posts application/x-www-form-urlencoded; parsed here directly (no multipart
    # dependency), with values decoded exactly as the V3 base string expects.
    signed: dict[str, list[str]] = {}
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in ("", "application/x-www-form-urlencoded"):
        body = (await request.body())[:MAX_FORM_BYTES].decode("utf-8", errors="replace")
        for k, v in parse_qsl(body, keep_blank_values=True):
            signed.setdefault(k, []).append(v)
    flat.update({k: v[0] for k, v in signed.items()})
    return signed, flat


def check_signature(request: Request, state: AppState, edge: PlivoEdge,
                    signed: dict[str, list[str]] | None) -> Response | None:
    """None when the request is Plivo's; otherwise the 403 to return (and a log line why)."""
    if not state.settings.security.verify_plivo_signatures:
        return None
    query = request.url.query
    url = edge.public_url + request.url.path + (f"?{query}" if query else "")
    check = verify_v3(request.headers, request.method, url, signed, edge.auth_tokens)
    if check:
        return None
    log.warning("Plivo %s %s refused (403): %s", request.method, request.url.path, check.reason)
    return PlainTextResponse("invalid Plivo signature", status_code=403)


def _plivo_metadata(p: dict[str, str]) -> dict[str, Any]:
    keep = {k: v for k, v in p.items()
            if k in ("ForwardedFrom", "CallerName", "ParentCallUUID", "ALegUUID",
                     "ALegRequestUUID") or k.startswith(("X-PH-", "SIP-"))}
    return {"plivo": keep} if keep else {}


def _outbox(state: AppState) -> Outbox | None:
    return state.events.outbox if state.events is not None else None


def _db_believed_up(state: AppState) -> bool:
    outbox = _outbox(state)
    return outbox is None or outbox.db_up


def _db_failed(state: AppState, exc: Exception, what: str) -> bool:
    """True when `exc` is the database being away and the outbox can stand in for it."""
    outbox = _outbox(state)
    if outbox is None or not is_outage(exc):
        return False
    outbox.report_db_error(exc)
    log.warning("%s: database unavailable (%s); going on without it", what, exc)
    return True


async def _record_refused(state: AppState, p: dict[str, str], direction: str, reason: str,
                          agent_id: str | None = None, agent_version: int | None = None) -> None:
    """Keep a trace of calls we turned away (busy, unknown number) in the session history."""
    metrics.CALLS_REJECTED.labels(reason).inc()
    now = iso(utcnow())
    fields: dict[str, Any] = {
        "id": new_id(), "call_uuid": p.get("CallUUID"), "direction": direction,
        "from_number": p.get("From", "")[:64], "to_number": p.get("To", "")[:64],
        "agent_id": agent_id, "agent_version": agent_version, "status": "failed",
        "end_reason": reason, "created_at": now, "ended_at": now,
        "metadata": _plivo_metadata(p), "node_id": sessions_repo.current_node_id(),
    }
    await _create_session(state, fields, _db_believed_up(state))


def _stream_xml(state: AppState, edge: PlivoEdge, session_id: str, call_uuid: str) -> Response:
    token = make_stream_token(edge.token_key, session_id, call_uuid,
                              state.settings.security.stream_token_ttl_s)
    return xml_response(pxml.stream_response(
        edge.stream_url(session_id, token),
        content_type=state.settings.plivo.content_type,
        status_callback_url=edge.url("/plivo/stream-status"),
    ))


async def _route_from_db(state: AppState, edge: PlivoEdge, agent_id: str | None,
                         number: str | None) -> Route | None:
    async with state.db.session() as s:
        if agent_id:
            agent = await agents_repo.get(s, agent_id)
            if agent is None:
                return None
            version = await agents_repo.current_version(s, agent)
        elif number:
            found = await numbers_repo.agent_for_number(s, number)
            if found is None:
                return None
            agent, version = found
        else:
            return None
    route = Route(agent.id, version.version, dict(version.config or {}))
    edge.routes.remember(None if agent_id else number, route)
    return route


@router.api_route("/answer", methods=["GET", "POST"])
async def answer(request: Request, state: State) -> Response:
    """Plivo's answer URL: returns `<Stream>` XML for the agent this number belongs to.

    While the database is away the agent comes from the cached number → agent table and the
    session record goes through the outbox: the call is answered all the same."""
    edge = get_edge(state)
    signed, p = await request_params(request)
    if (refused := check_signature(request, state, edge, signed)) is not None:
        return refused
    call_uuid = p.get("CallUUID", "").strip()
    if not call_uuid:
        log.warning("answer request without CallUUID refused (400)")
        return PlainTextResponse("missing CallUUID", status_code=400)
    direction = p.get("Direction", "inbound").strip().lower()
    direction = direction if direction in ("inbound", "outbound") else "inbound"
    outbound_sid = request.query_params.get("session_id")

    # Plivo retries the answer URL on timeouts: the same call gets the same session.
    known = edge.answered.by_call_uuid(call_uuid)
    if known is not None and known.row.get("status") in ("ringing", "active"):
        log.info("answer retried for call %s (session %s)", call_uuid, known.session_id)
        return _stream_xml(state, edge, known.session_id, call_uuid)
    agent_id = request.query_params.get("agent") or p.get("agent")
    number = None if agent_id else normalize_number(p.get("To", ""))
    route: Route | None = None
    online = _db_believed_up(state)
    if online:
        try:
            async with asyncio.timeout(DB_TIMEOUT_S), state.db.transaction() as s:
                existing = await sessions_repo.get_by_call_uuid(s, call_uuid)
                if existing is not None and existing.status in ("ringing", "active"):
                    log.info("answer retried for call %s (session %s)", call_uuid,
                             existing.id)
                    return _stream_xml(state, edge, existing.id, call_uuid)
                if outbound_sid:
                    return await _answer_outbound(s, state, edge, outbound_sid, call_uuid)
            async with asyncio.timeout(DB_TIMEOUT_S):
                route = await _route_from_db(state, edge, agent_id, number)
        except Exception as exc:
            if not _db_failed(state, exc, f"answer for call {call_uuid}"):
                raise
            online = False
    if not online:
        if outbound_sid:
            # Its session was made by POST /v1/calls on whichever replica placed it.
            log.warning("outbound answer for session %s refused: the database is away",
                        outbound_sid)
            return xml_response(pxml.hangup_response())
        route = (edge.routes.for_agent(agent_id) if agent_id
                 else edge.routes.for_number(number) if number else None)
    if route is None:
        log.warning("call %s to %r: no agent for this number%s; apologising", call_uuid,
                    p.get("To", ""), f" (agent={agent_id!r})" if agent_id else "")
        await _record_refused(state, p, direction, "unknown_number")
        return xml_response(pxml.apology_response(UNKNOWN_NUMBER_APOLOGY))
    session_id = new_id()
    if state.draining or not await edge.admission.admit(session_id):
        draining = edge.admission.draining or state.draining
        local_full = edge.admission.in_use >= edge.admission.max_calls
        log.warning("call %s refused busy: %d/%d calls in use here%s", call_uuid,
                    edge.admission.in_use, edge.admission.max_calls,
                    " (draining)" if draining else "" if local_full
                    else " (the cluster-wide bus.max_concurrent_calls is reached)")
        await _record_refused(state, p, direction, "busy", route.agent_id, route.version)
        return xml_response(pxml.busy_response())
    fields: dict[str, Any] = {
        "id": session_id, "agent_id": route.agent_id, "agent_version": route.version,
        "call_uuid": call_uuid, "direction": direction,
        "from_number": p.get("From", "")[:64], "to_number": p.get("To", "")[:64],
        "status": "ringing", "metadata": _plivo_metadata(p),
        "node_id": sessions_repo.current_node_id(), "created_at": iso(utcnow()),
    }
    if not await _create_session(state, fields, online):
        edge.admission.release(session_id)
        return xml_response(pxml.apology_response(UNAVAILABLE_APOLOGY))
    # The stream reads these in-process (no database read, no race with the outbox), or from
    # the bus when it connects to another process.
    answered_row = {
        "agent_id": route.agent_id, "agent_version": route.version, "direction": direction,
        "from_number": fields["from_number"], "to_number": fields["to_number"],
        "call_uuid": call_uuid, "status": "ringing", "metadata": dict(fields["metadata"]),
    }
    edge.answered.put(session_id, answered_row, dict(route.config))
    await get_bus(state).share_answer(session_id, {"row": answered_row,
                                                   "config": dict(route.config)})
    log.info("call %s from %s to %s → agent %s v%d, session %s%s", call_uuid,
             p.get("From", ""), p.get("To", ""), route.agent_id, route.version, session_id,
             "" if online else " (database away: answered from the cache)")
    return _stream_xml(state, edge, session_id, call_uuid)


async def _create_session(state: AppState, fields: dict[str, Any], online: bool) -> bool:
    """Write the session row now if the database answers, else through the outbox."""
    if online:
        try:
            async with asyncio.timeout(DB_TIMEOUT_S), state.db.transaction() as s:
                await create_session(s, fields)
            return True
        except Exception as exc:
            if not _db_failed(state, exc, f"session for call {fields['call_uuid']}"):
                log.exception("call %s: could not create its session", fields["call_uuid"])
                return False
    outbox = _outbox(state)
    if outbox is None:
        return False
    return outbox.put(SESSION_CREATE, fields["id"], fields)


async def _answer_outbound(s: Any, state: AppState, edge: PlivoEdge, session_id: str,
                           call_uuid: str) -> Response:
    row: Session | None = await sessions_repo.get(s, session_id)
    if row is None or row.direction != "outbound" or row.status != "ringing":
        log.warning("outbound answer for session %s refused: %s", session_id,
                    "no such session" if row is None else f"{row.direction}/{row.status}")
        return xml_response(pxml.hangup_response())
    if row.call_uuid and row.call_uuid != call_uuid:
        log.warning("outbound session %s already answered as call %s; refusing %s",
                    session_id, row.call_uuid, call_uuid)
        return xml_response(pxml.hangup_response())
    if state.draining or not await edge.admission.admit(session_id):
        await sessions_repo.end(s, session_id, status="failed", end_reason="busy")
        return xml_response(pxml.busy_response())
    row.call_uuid = call_uuid
    await s.flush()
    log.info("outbound call %s answered (session %s)", call_uuid, session_id)
    return _stream_xml(state, edge, session_id, call_uuid)


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "") else None
    except ValueError:
        return None


@router.api_route("/hangup", methods=["GET", "POST"])
async def hangup(request: Request, state: State) -> Response:
    """Plivo's hangup URL: records cause and duration; safe to receive more than once (and
    recorded through the outbox while the database is away)."""
    edge = get_edge(state)
    signed, p = await request_params(request)
    if (refused := check_signature(request, state, edge, signed)) is not None:
        return refused
    call_uuid = p.get("CallUUID") or None
    cause = (p.get("HangupCause") or p.get("HangupCauseName") or "")[:128] or None
    call_status = (p.get("CallStatus") or "").lower()
    report: dict[str, Any] = {
        "session_id": request.query_params.get("session_id"), "call_uuid": call_uuid,
        "request_uuid": p.get("RequestUUID") or p.get("ALegRequestUUID"), "cause": cause,
        "duration": _float(p.get("Duration")), "call_status": call_status,
    }
    log.info("call %s hung up: %s (%s, %s s)", call_uuid, cause or "no cause", call_status,
             p.get("Duration", "?"))
    if _db_believed_up(state):
        try:
            if (outbox := _outbox(state)) is not None:
                # Records queued before this callback go first — above all the stream's
                # "active": a hangup overtaking it would close a streamed call as never
                # streamed. Too slow a database sends the hangup through the outbox (in order).
                await asyncio.wait_for(outbox.flush(), DB_TIMEOUT_S)
            async with asyncio.timeout(DB_TIMEOUT_S), state.db.transaction() as s:
                done = await record_hangup(s, report)
        except Exception as exc:
            if not _db_failed(state, exc, f"hangup of call {call_uuid}"):
                raise
        else:
            if done is None:
                log.info("hangup for unknown call %s ignored", call_uuid)
            elif done[1] != "active":  # a live stream releases its own slot when it closes
                edge.admission.release(done[0])
            return PlainTextResponse("OK")
    outbox = _outbox(state)
    assert outbox is not None  # _db_failed/_db_believed_up say so
    outbox.put(PLIVO_HANGUP, report["session_id"], report)
    known = (edge.answered.get(report["session_id"]) if report["session_id"] else None) or \
        (edge.answered.by_call_uuid(call_uuid) if call_uuid else None)
    if known is not None and known.row.get("status") == "ringing":
        # The stream never came; a live stream releases its own slot when it closes.
        edge.answered.forget(known.session_id)
        edge.admission.release(known.session_id)
    return PlainTextResponse("OK")


@router.api_route("/stream-status", methods=["GET", "POST"])
async def stream_status(request: Request, state: State) -> Response:
    """`<Stream statusCallbackUrl>`: lifecycle events, logged and attached to the session."""
    edge = get_edge(state)
    signed, p = await request_params(request)
    if (refused := check_signature(request, state, edge, signed)) is not None:
        return refused
    raw = p.get("Event", "")
    event = STREAM_EVENTS.get(raw.lower(), "unknown")
    call_uuid = p.get("CallUUID") or None
    stream_id = p.get("StreamID") or p.get("StreamId") or p.get("stream_id")
    level = logging.WARNING if event in ("failed", "degraded", "unknown") else logging.INFO
    log.log(level, "stream status for call %s stream %s: %s (Event=%r)", call_uuid, stream_id,
            event, raw)
    # The stream's own activation record carries the stream id too; this is a second source.
    if call_uuid and stream_id and _db_believed_up(state):
        try:
            async with asyncio.timeout(DB_TIMEOUT_S), state.db.transaction() as s:
                row = await sessions_repo.get_by_call_uuid(s, call_uuid)
                if row is not None and not row.stream_id:
                    row.stream_id = stream_id[:64]
        except Exception as exc:
            if not _db_failed(state, exc, f"stream status of call {call_uuid}"):
                raise
    return PlainTextResponse("OK")


@router.websocket("/stream/{session_id}")
async def stream(websocket: WebSocket, session_id: str) -> None:
    await serve_stream(websocket, session_id, websocket.app.state.pb)
