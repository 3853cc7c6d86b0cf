"""Live control across processes: the requesting side (`RemoteCall`) and the owner's side
(`ControlServer`).

`POST /v1/sessions/{id}/say|hangup|transfer|inject` on a process that does not host the call
gets a `RemoteCall` for the owner (app.api.session_control); each action becomes a
`ControlRequest` the owner carries out on its own `CallControl` and answers with a
`ControlReply`, which the requester turns back into its HTTP answer. A state change made
through another process is followed by a "state" request: the owner reloads the call's live
state from the database (the source of truth).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from enum import StrEnum
from typing import Any

from app.bus.base import ClusterBus, ControlReply, ControlRequest, get_bus
from app.calls.registry import live_calls
from app.calls.state_store import shared_state_store
from app.tools.control import NotOnThisCall, TransferPlan
from pipelines.outcomes import ConsultProgress

log = logging.getLogger(__name__)


class ControlRefused(Exception):
    """The owner (or the bus) refused the request; `status`/`detail` say how, HTTP-like."""

    def __init__(self, reply: ControlReply) -> None:
        super().__init__(reply.detail)
        self.status = reply.status
        self.detail = reply.detail


class RemoteCall:
    """A call another process hosts, controlled through the bus. Each action returns once the
    owner has done it (`say`: once the owner has queued it)."""

    def __init__(self, bus: ClusterBus, owner: str, session_id: str) -> None:
        self.bus = bus
        self.owner = owner
        self.session_id = session_id

    async def _ask(self, req: ControlRequest) -> None:
        reply = await self.bus.request(self.owner, req)
        if not reply.ok:
            raise ControlRefused(reply)

    async def say(self, text: str, *, interruptible: bool = True) -> None:
        await self._ask(ControlRequest(self.session_id, "say",
                                       {"text": text, "interruptible": interruptible}))

    async def hangup(self, reason: str) -> None:
        await self._ask(ControlRequest(self.session_id, "hangup", {"reason": reason}))

    async def transfer(self, plan: TransferPlan) -> None:
        """Returns once the owner has started it (a warm one goes on there)."""
        await self._ask(ControlRequest(self.session_id, "transfer", plan.as_dict()))

    async def consult_progress(self, leg_id: str, progress: ConsultProgress,
                               detail: str = "") -> None:
        await self._ask(ControlRequest(self.session_id, "consult", {
            "leg_id": leg_id, "progress": progress.value, "detail": detail}))

    async def inject(self, text: str) -> None:
        await self._ask(ControlRequest(self.session_id, "inject", {"text": text}))

    async def update(self, system_prompt: str | None = None, tools: list[Any] | None = None,
                     llm: dict[str, Any] | None = None, new_agent: str = "", *,
                     tts: dict[str, Any] | None = None, voice: str | None = None,
                     turn_taking: dict[str, Any] | None = None) -> list[str]:
        return await self._fields(ControlRequest(
            self.session_id, "update", {"system_prompt": system_prompt, "tools": tools,
                                        "llm": llm, "new_agent": new_agent, "tts": tts,
                                        "voice": voice, "turn_taking": turn_taking}))

    async def handoff(self, agent_id: str, summary: str = "") -> list[str]:
        return await self._fields(ControlRequest(self.session_id, "handoff",
                                                 {"agent_id": agent_id, "summary": summary}))

    async def _fields(self, req: ControlRequest) -> list[str]:
        reply = await self.bus.request(self.owner, req)
        if not reply.ok:
            raise ControlRefused(reply)
        return list(reply.data.get("fields") or [])

    async def play(self, wav_bytes: bytes, *, interruptible: bool = True) -> str:
        reply = await self.bus.request(self.owner, ControlRequest(
            self.session_id, "play", {"audio_data": base64.b64encode(wav_bytes).decode(),
                                      "interruptible": interruptible}))
        if not reply.ok:
            raise ControlRefused(reply)
        return str(reply.data.get("play_id") or "")

    async def play_background(self, sound: str, volume: float = 0.5, loop: bool = True) -> None:
        await self._ask(ControlRequest(self.session_id, "background",
                                       {"sound": sound, "volume": volume, "loop": loop}))

    async def stop_background(self) -> None:
        await self._ask(ControlRequest(self.session_id, "background_stop"))


async def remote_owner(state: Any, session_id: str) -> RemoteCall | None:
    """The call as another live process hosts it, or None (here, over, or unknown)."""
    bus = get_bus(state)
    owner = await bus.owner(session_id)
    if owner is None or owner == bus.node_id:
        return None
    return RemoteCall(bus, owner, session_id)


async def tell_owner_state_changed(state: Any, session_id: str) -> None:
    """After a state patch here: the owning process, if another, reloads the live copy."""
    registry = live_calls(state)
    if registry is not None and registry.get(session_id) is not None:
        return  # hosted here: the store updated the live copy already
    remote = await remote_owner(state, session_id)
    if remote is None:
        return
    reply = await remote.bus.request(remote.owner, ControlRequest(session_id, "state"))
    if not reply.ok:
        log.warning("session %s: owner %s did not reload its state: %s", session_id,
                    remote.owner, reply.detail)


class ControlServer:
    """The owner's side: carries out requests on the calls this process hosts."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, req: ControlRequest) -> ControlReply:
        registry = live_calls(self.state)
        control = registry.get(req.session_id) if registry is not None else None
        if control is None or control.ended:
            return ControlReply(409, f"session '{req.session_id}' has ended")
        a = req.args
        try:
            if req.action == "say":
                # Like the local API: accepted now, spoken in turn (progress shows as events).
                self._background(control.say(str(a["text"]),
                                             interruptible=bool(a.get("interruptible", True))),
                                 f"say on session {req.session_id}")
            elif req.action == "hangup":
                await control.hangup(str(a.get("reason") or "api_hangup"))
            elif req.action == "transfer":
                plan = TransferPlan.from_dict(a)
                if plan.mode == "warm":  # rings for a while: its phases are events
                    task = self._background(control.transfer(plan),
                                            f"warm transfer on session {req.session_id}")
                    await asyncio.sleep(0)  # a refusal comes before the transfer's first wait
                    if task.done():
                        await task
                else:
                    await control.transfer(plan)
            elif req.action == "consult":
                control.consult_progress(str(a["leg_id"]), ConsultProgress(a["progress"]),
                                         str(a.get("detail") or ""))
            elif req.action == "inject":
                await control.inject(str(a["text"]))
            elif req.action == "update":
                fields = control.update(a.get("system_prompt"), a.get("tools"), a.get("llm"),
                                        str(a.get("new_agent") or ""), tts=a.get("tts"),
                                        voice=a.get("voice"), turn_taking=a.get("turn_taking"))
                return ControlReply(202, "accepted", {"fields": fields})
            elif req.action == "handoff":
                fields = await control.handoff(str(a["agent_id"]), str(a.get("summary") or ""))
                return ControlReply(202, "accepted", {"fields": fields})
            elif req.action == "play":
                play_id = await control.play(base64.b64decode(str(a["audio_data"])),
                                             interruptible=bool(a.get("interruptible", True)))
                return ControlReply(202, "accepted", {"play_id": play_id})
            elif req.action == "background":
                control.play_background(str(a["sound"]), float(a.get("volume", 0.5)),
                                        bool(a.get("loop", True)))
            elif req.action == "background_stop":
                control.stop_background()
            elif req.action == "state":
                fresh = await shared_state_store(self.state).get(req.session_id,
                                                                 include_reserved=True)
                control.state.clear()
                control.state.update(fresh)
            else:
                return ControlReply(422, f"unknown action {req.action!r}")
        except (KeyError, ValueError) as exc:
            return ControlReply(422, str(exc))
        except NotOnThisCall as exc:
            return ControlReply(409, str(exc))
        except Exception as exc:
            log.warning("%s on session %s failed: %r", req.action, req.session_id, exc)
            return ControlReply(502, f"{req.action} failed: {type(exc).__name__}")
        return ControlReply(202, "accepted")

    def _background(self, coro: Any, what: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=what)
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("%s failed: %r", what, t.exception())

        task.add_done_callback(done)
        return task

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()


class Delivery(StrEnum):
    DELIVERED = "delivered"
    REFUSED = "refused"  # the call is live but was not waiting for it
    NO_CALL = "no_call"  # no live call of that session anywhere


async def route_consult_progress(state: Any, session_id: str, leg_id: str,
                                 progress: ConsultProgress, detail: str = "") -> Delivery:
    """A warm transfer's consult leg, as the carrier reported it, to the call that placed it
    (here or on its owner)."""
    registry = live_calls(state)
    control = registry.get(session_id) if registry is not None else None
    try:
        if control is not None and not control.ended:
            control.consult_progress(leg_id, progress, detail)
            return Delivery.DELIVERED
        remote = await remote_owner(state, session_id)
        if remote is None:
            return Delivery.NO_CALL
        await remote.consult_progress(leg_id, progress, detail)
        return Delivery.DELIVERED
    except (NotOnThisCall, ControlRefused) as exc:
        log.info("session %s: consult leg %s %s not taken: %s", session_id, leg_id,
                 progress.value, exc)
        return Delivery.REFUSED
