"""Live control of a call: `POST /v1/sessions/{id}/say|hangup|transfer|inject|play`,
`PATCH /v1/sessions/{id}` (prompt, tools, LLM from the next answer) and
`PUT|DELETE /v1/sessions/{id}/background`.

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
import base64
import binascii
import logging
from typing import Any, Literal, Protocol

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.api.deps import State
from app.api.problems import ApiProblem, not_found, problems, unprocessable
from app.bus.control import ControlRefused, RemoteCall, remote_owner
from app.calls.registry import LiveCall, live_calls
from app.db.repos import sessions as sessions_repo
from app.state import AppState
from app.tools.control import (
    MAX_BRIEF_CHARS,
    MAX_TRANSFER_TARGETS,
    NOBODY_ANSWERED_MESSAGE,
    DialMode,
    NotOnThisCall,
    TransferMode,
    TransferPlan,
    normalize_target,
)

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
    target: str | None = Field(None, min_length=1, max_length=256,
                               description="E.164 number or sip: URI (or give `targets`)")
    targets: list[str] | None = Field(
        None, min_length=1, max_length=MAX_TRANSFER_TARGETS,
        description="Several numbers or sip: URIs, rung as `dial_mode` says")
    mode: TransferMode = Field("cold", description="cold: the caller leaves the agent for the "
                               "target at once. warm: the caller waits on hold while each "
                               "target is rung and hears `brief`; the first to pick up is "
                               "connected, and nobody answering brings the caller back to the "
                               "agent")
    brief: str = Field("", max_length=MAX_BRIEF_CHARS,
                       description="Spoken to the target before the caller joins (warm)")
    dial_mode: DialMode = "sequential"
    ring_timeout_s: int = Field(30, ge=5, le=120, description="How long each target rings")
    failure_message: str = Field(
        NOBODY_ANSWERED_MESSAGE, max_length=1000,
        description="Said to the caller when a warm transfer finds nobody")

    @field_validator("target")
    @classmethod
    def _target(cls, v: str | None) -> str | None:
        return None if v is None else normalize_target(v)

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [normalize_target(t) for t in v]

    @model_validator(mode="after")
    def _one_of(self) -> TransferIn:
        if (self.target is None) == (self.targets is None):
            raise ValueError("give either target or targets")
        return self

    def plan(self) -> TransferPlan:
        return TransferPlan.to(self.targets or [self.target or ""], mode=self.mode,
                               brief=self.brief, dial_mode=self.dial_mode,
                               ring_timeout_s=self.ring_timeout_s,
                               failure_message=self.failure_message)


class InjectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=4000)


class UpdateIn(BaseModel):
    """What changes from the agent's next answer on (the one being spoken keeps its own)."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = Field(None, min_length=1, description="The new system prompt")
    tools: list[dict[str, Any]] | None = Field(
        None, description="The agent config's tool definitions; [] removes every tool")
    llm: dict[str, Any] | None = Field(
        None, description="An LLM provider block, as in the agent config")
    tts: dict[str, Any] | None = Field(
        None, description="A TTS provider block, as in the agent config")
    voice: str | None = Field(None, min_length=1, max_length=200)
    turn_taking: dict[str, Any] | None = Field(
        None, description="Merged into the call's vad / turn / interruption / idle / "
                          "semantic_vad settings (JSON merge patch), from the next utterance")
    new_agent: str = Field("", max_length=200, description="Names the persona taking over "
                           "(agent.handoff) when the prompt changes with the tools or LLM")


class PlayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    audio_data: str = Field(min_length=1, max_length=12_000_000,
                            description="A WAV file (16-bit PCM, any rate, mono or stereo), "
                                        "base64")
    interruptible: bool = True


class BackgroundIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sound: str = Field(min_length=1, max_length=12_000_000,
                       description="hold_music, office or hum, or a base64 WAV")
    volume: float = Field(0.5, ge=0.0, le=1.0)
    loop: bool = True


class Accepted(BaseModel):
    session_id: str
    action: str
    status: Literal["accepted"] = "accepted"


class Updated(Accepted):
    fields: list[str] = Field(default_factory=list, description="What changed")


class Playing(Accepted):
    play_id: str = Field(description="Named again by the play.completed event")


class LiveControl(Protocol):
    """What these endpoints do to a call, hosted here (`CallControl`) or elsewhere."""

    async def say(self, text: str, *, interruptible: bool = True) -> None: ...
    async def hangup(self, reason: str) -> None: ...
    async def transfer(self, plan: TransferPlan) -> None: ...
    async def inject(self, text: str) -> None: ...
    async def play(self, wav_bytes: bytes, *, interruptible: bool = True) -> str: ...
    async def handoff(self, agent_id: str, summary: str = "") -> list[str]: ...


async def _live_call(state: AppState, session_id: str) -> LiveCall | RemoteCall:
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


def _background(state: AppState, coro: Any, what: str) -> asyncio.Task[Any]:
    tasks: set[asyncio.Task[Any]] = state.extras.setdefault(_TASKS_KEY, set())
    task = asyncio.create_task(coro, name=what)
    tasks.add(task)

    def done(t: asyncio.Task[Any]) -> None:
        tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.warning("%s failed: %r", what, t.exception())

    task.add_done_callback(done)
    return task


def _field_problem(exc: ValueError, default: str) -> ApiProblem:
    """A call's refusal "tools.0.name: ..." as a 422 naming that field."""
    field, sep, message = str(exc).partition(": ")
    if not sep or " " in field:
        field, message = default, str(exc)
    return unprocessable([{"field": field, "message": message}])


async def _act(what: str, session_id: str, action: Any, field: str = "body") -> Any:
    try:
        return await action
    except ApiProblem:
        raise
    except ControlRefused as exc:
        if exc.status == 422:
            raise _field_problem(ValueError(exc.detail), field) from None
        raise ApiProblem(exc.status, exc.detail) from None
    except ValueError as exc:
        raise _field_problem(exc, field) from None
    except NotOnThisCall as exc:
        raise ApiProblem(409, str(exc)) from None
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
    """Transfer the caller to a number or SIP URI, or the first of several to answer. A warm
    transfer is under way when this answers: its progress shows as `call.transferred` events
    (phase holding, dialing, answered, no_answer, bridged or failed) and `participant.*`."""
    control = await _live_call(state, session_id)
    try:
        plan = body.plan()
    except ValueError as exc:
        raise _field_problem(exc, "body") from None
    if plan.mode == "warm" and not isinstance(control, RemoteCall):
        task = _background(state, control.transfer(plan), f"warm transfer on session {session_id}")
        await asyncio.sleep(0)  # a refusal (no phone line, one under way) comes before any wait
        if task.done():
            await _act("transfer", session_id, task)
    else:
        await _act("transfer", session_id, control.transfer(plan))
    return Accepted(session_id=session_id, action="transfer")


@router.post("/{session_id}/inject", status_code=status.HTTP_202_ACCEPTED,
             response_model=Accepted, responses=_ACTION_PROBLEMS)
async def inject(session_id: str, body: InjectIn, state: State) -> Accepted:
    """Add context the LLM sees on its next turn (not spoken)."""
    control = await _live_call(state, session_id)
    await _act("inject", session_id, control.inject(body.text))
    return Accepted(session_id=session_id, action="inject")


async def _now(action: Any) -> Any:
    """A hosted call's synchronous reconfiguration, in `_act`'s shape."""
    return action()


@router.patch("/{session_id}", status_code=status.HTTP_202_ACCEPTED, response_model=Updated,
              responses=problems(404, 409, 422, 502))
async def update(session_id: str, body: UpdateIn, state: State) -> Updated:
    """Reconfigure the running call: a new system prompt, tools and/or LLM, from the agent's
    next answer on (`session.updated`; `agent.handoff` when the prompt changes with the tools or
    LLM). Validated like an agent config; a bad field is a 422 naming it and nothing changes."""
    if all(v is None for v in (body.prompt, body.tools, body.llm, body.tts, body.voice,
                               body.turn_taking)):
        raise unprocessable([{"field": "body", "message": "give at least one of prompt, "
                              "tools, llm, tts, voice, turn_taking"}])
    control = await _live_call(state, session_id)
    if isinstance(control, RemoteCall):
        fields = await _act("update", session_id, control.update(
            body.prompt, body.tools, body.llm, body.new_agent, tts=body.tts, voice=body.voice,
            turn_taking=body.turn_taking))
    else:
        fields = await _act("update", session_id, _now(lambda: control.update(
            body.prompt, body.tools, body.llm, body.new_agent, tts=body.tts, voice=body.voice,
            turn_taking=body.turn_taking)))
    return Updated(session_id=session_id, action="update", fields=fields)


class HandoffIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent_id: str = Field(min_length=1, max_length=64, description="The agent taking over")
    summary: str = Field("", max_length=4000, description="Context for the agent taking over")


@router.post("/{session_id}/handoff", status_code=status.HTTP_202_ACCEPTED,
             response_model=Updated, responses=problems(404, 409, 422, 502))
async def handoff(session_id: str, body: HandoffIn, state: State) -> Updated:
    """Another stored agent takes the call over from the next answer, with the conversation so
    far: its prompt, tools, LLM, TTS and voice (`agent.handoff`; the report lists it)."""
    control = await _live_call(state, session_id)
    fields = await _act("handoff", session_id, control.handoff(body.agent_id, body.summary),
                        field="agent_id")
    return Updated(session_id=session_id, action="handoff", fields=fields)


@router.post("/{session_id}/play", status_code=status.HTTP_202_ACCEPTED, response_model=Playing,
             responses=problems(404, 409, 422, 502))
async def play(session_id: str, body: PlayIn, state: State) -> Playing:
    """Play a WAV file to the caller after what the agent is saying; `play.completed` follows
    (with `interrupted` when the caller cut it off)."""
    try:
        wav = base64.b64decode(body.audio_data, validate=True)
    except (binascii.Error, ValueError):
        raise unprocessable([{"field": "audio_data", "message": "not valid base64"}]) from None
    control = await _live_call(state, session_id)
    play_id = await _act("play", session_id, control.play(wav, interruptible=body.interruptible),
                         field="audio_data")
    return Playing(session_id=session_id, action="play", play_id=play_id)


@router.put("/{session_id}/background", status_code=status.HTTP_202_ACCEPTED,
            response_model=Accepted, responses=problems(404, 409, 422, 502))
async def background(session_id: str, body: BackgroundIn, state: State) -> Accepted:
    """Lay a background sound under the call (replacing any): alone while the agent is silent,
    under its voice while it speaks, until `DELETE .../background` or the end of the call."""
    control = await _live_call(state, session_id)
    if isinstance(control, RemoteCall):
        await _act("background", session_id,
                   control.play_background(body.sound, body.volume, body.loop), field="sound")
    else:
        await _act("background", session_id, _now(
            lambda: control.play_background(body.sound, body.volume, body.loop)), field="sound")
    return Accepted(session_id=session_id, action="background")


@router.delete("/{session_id}/background", status_code=status.HTTP_202_ACCEPTED,
               response_model=Accepted, responses=problems(404, 409, 502))
async def stop_background(session_id: str, state: State) -> Accepted:
    control = await _live_call(state, session_id)
    if isinstance(control, RemoteCall):
        await _act("background", session_id, control.stop_background())
    else:
        await _act("background", session_id, _now(control.stop_background))
    return Accepted(session_id=session_id, action="background_stop")
