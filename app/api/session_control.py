"""Live control of a call: `POST /v1/sessions/{id}/say|hangup|transfer|inject`.

The call is looked up in the process's live-call registry (`app.calls.registry.live_calls`:
the call host at `state.calls`, or its `.live` LiveCalls), which yields a `CallControl`. Not
there: if the bus (app.bus, `bus.url`) names another live process hosting it, the request is
sent there and its answer returned (503/504 if that process cannot be reached in time).
Otherwise 404 "session not live on this replica" if the session is still live elsewhere, 404
"not found" if it never existed, 409 if it has ended. All actions answer 202: `say` is queued
(progress shows up as agent.speech_* events), the others are done by then.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal, Protocol

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.api.deps import State
from app.api.problems import ApiProblem, not_found, problems, unprocessable
from app.bus.control import ControlRefused, RemoteCall, remote_owner
from app.calls.registry import live_calls
from app.calls.transfer import normalize_target
from app.db.repos import sessions as sessions_repo
from app.state import AppState
from app.tools.control import TransferMode

log = logging.getLogger(__name__)

router = APIRouter(prefix="/sessions", tags=["sessions"])

_TASKS_KEY = "app.api.session_control.tasks"
# Not live (404), ended (409), refused by the call (422) or by the telephony provider (502).
_ACTION_PROBLEMS = problems(404, 409, 502)


class SayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=4000)
    interruptible: bool = True


class HangupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("api_hangup", min_length=1, max_length=64)


class TransferIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str = Field(min_length=1, max_length=256, description="E.164 number or sip: URI")
    mode: Literal["cold", "warm"] = "cold"
    brief: str = Field("", max_length=1000, description="Spoken to the target (warm mode)")

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        return normalize_target(v)


class InjectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=4000)


class Accepted(BaseModel):
    session_id: str
    action: str
    status: Literal["accepted"] = "accepted"


class LiveControl(Protocol):
    """What these endpoints do to a call, hosted here (`CallControl`) or elsewhere."""

    async def say(self, text: str, *, interruptible: bool = True) -> None: ...
    async def hangup(self, reason: str) -> None: ...
    async def transfer(self, target: str, mode: TransferMode = "cold",
                       brief: str = "") -> None: ...
    async def inject(self, text: str) -> None: ...


async def _live_call(state: AppState, session_id: str) -> LiveControl:
    registry = live_calls(state)
    control = registry.get(session_id) if registry is not None else None
    if control is not None and not control.ended:
        return control
    remote = await remote_owner(state, session_id)
    if remote is not None:
        return remote
    async with state.db.sessionmaker() as s:
        row = await sessions_repo.get(s, session_id)
    if row is None:
        raise not_found("session", session_id)
    if control is not None or row.status not in sessions_repo.LIVE_STATUSES:
        raise ApiProblem(409, f"session '{session_id}' has ended")
    raise ApiProblem(404, f"session '{session_id}' is not live on this replica")


def _background(state: AppState, coro: Any, what: str) -> None:
    tasks: set[asyncio.Task[Any]] = state.extras.setdefault(_TASKS_KEY, set())
    task = asyncio.create_task(coro, name=what)
    tasks.add(task)

    def done(t: asyncio.Task[Any]) -> None:
        tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.warning("%s failed: %r", what, t.exception())

    task.add_done_callback(done)


async def _act(what: str, session_id: str, action: Any) -> None:
    try:
        await action
    except ApiProblem:
        raise
    except ControlRefused as exc:
        raise ApiProblem(exc.status, exc.detail) from None
    except ValueError as exc:
        raise unprocessable([{"field": "body", "message": str(exc)}]) from None
    except Exception as exc:
        log.warning("%s on session %s failed: %r", what, session_id, exc)
        raise ApiProblem(502, f"{what} failed: {type(exc).__name__}") from None


@router.post("/{session_id}/say", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted,
             responses=problems(404, 409))
async def say(session_id: str, body: SayIn, state: State) -> Accepted:
    """Speak text to the caller now (queued behind anything the agent is saying)."""
    control = await _live_call(state, session_id)
    if isinstance(control, RemoteCall):
        # The owner queues it and answers at once; its refusal (e.g. 409) is this answer.
        await _act("say", session_id, control.say(body.text, interruptible=body.interruptible))
    else:
        _background(state, control.say(body.text, interruptible=body.interruptible),
                    f"say on session {session_id}")
    return Accepted(session_id=session_id, action="say")


@router.post("/{session_id}/hangup", status_code=status.HTTP_202_ACCEPTED,
             response_model=Accepted, responses=_ACTION_PROBLEMS)
async def hangup(session_id: str, state: State, body: HangupIn | None = None) -> Accepted:
    control = await _live_call(state, session_id)
    await _act("hangup", session_id, control.hangup((body or HangupIn()).reason))
    return Accepted(session_id=session_id, action="hangup")


@router.post("/{session_id}/transfer", status_code=status.HTTP_202_ACCEPTED,
             response_model=Accepted, responses=_ACTION_PROBLEMS)
async def transfer(session_id: str, body: TransferIn, state: State) -> Accepted:
    """Transfer the caller to a number or SIP URI (`warm`: `brief` is spoken to the target)."""
    control = await _live_call(state, session_id)
    await _act("transfer", session_id, control.transfer(body.target, body.mode, body.brief))
    return Accepted(session_id=session_id, action="transfer")


@router.post("/{session_id}/inject", status_code=status.HTTP_202_ACCEPTED,
             response_model=Accepted, responses=_ACTION_PROBLEMS)
async def inject(session_id: str, body: InjectIn, state: State) -> Accepted:
    """Add context the LLM sees on its next turn (not spoken)."""
    control = await _live_call(state, session_id)
    await _act("inject", session_id, control.inject(body.text))
    return Accepted(session_id=session_id, action="inject")
