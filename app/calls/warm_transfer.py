"""A warm transfer, as a part of the call: the caller on hold with the agent while a person is
found, briefed and bridged in, or brought back to the agent when nobody takes the call.

    holding ─▶ dialing ─▶ answered ─▶ (brief heard: ready) ─▶ bridged
                  │           │
                  ▼           ▼ (hangs up before joining)
              no_answer ◀─────┘ ─▶ next target … ─▶ failed (back to the agent)

Each step is a `call.transferred` event with its phase; a target who picks up is a
`participant.added`, one who leaves a `participant.removed`, and the agent is removed once the
caller is bridged. Sequential dialling rings the targets one after another, each for the plan's
ring timeout; parallel rings them all and the first to pick up takes the call (the others are
cancelled).

The carrier's side (`ConsultingTransport`) places and drops the consult legs; what happens on
them comes back through `progress()` — from the carrier's callbacks, possibly received by
another process and routed here through the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app.calls.call_sounds import CallSounds, Engine
from app.calls.customer_app.audio_relay import AudioRelay
from app.calls.transport import CallTransport, ConsultingTransport
from app.tools.control import NotOnThisCall, TransferFailed, TransferPlan
from pipelines import events as ev
from pipelines.outcomes import ConsultProgress, TransferPhase

log = logging.getLogger(__name__)

# A consult leg's ring may be reported a little after its ring timeout by the carrier; past
# this much more we give up on it ourselves.
RING_GRACE_S = 5.0
# How long a target who picked up may take to hear the brief and join.
BRIEF_LIMIT_S = 90.0
HOLD_MUSIC = "hold_music"
HOLD_VOLUME = 0.6


@dataclass(frozen=True, slots=True)
class _Report:
    leg_id: str
    progress: ConsultProgress
    detail: str


class _Attempt:
    """One warm transfer: rings the plan's targets and returns the leg that took the call."""

    def __init__(self, transport: ConsultingTransport, plan: TransferPlan,
                 emit: ev.EventCallback) -> None:
        self._transport = transport
        self._plan = plan
        self._emit = emit
        self._reports: asyncio.Queue[_Report] = asyncio.Queue()
        self._ringing: dict[str, str] = {}  # leg id -> target, for every leg not given up
        self._answered: str | None = None  # the leg hearing the brief

    def progress(self, report: _Report) -> None:
        self._reports.put_nowait(report)

    def _phase(self, phase: TransferPhase, target: str, reason: str = "") -> None:
        self._emit(ev.CallTransferred(target=target, mode="warm", phase=phase, reason=reason))

    async def find_target(self) -> tuple[str, str]:
        """(leg id, target) of the person who took the call; TransferFailed when nobody did."""
        self._phase(TransferPhase.HOLDING, ", ".join(self._plan.targets))
        rounds = ([list(self._plan.targets)] if self._plan.dial_mode == "parallel"
                  else [[t] for t in self._plan.targets])
        try:
            for targets in rounds:
                won = await self._ring(targets)
                if won is not None:
                    return won
        finally:
            await self._drop_all("released")
        self._phase(TransferPhase.FAILED, ", ".join(self._plan.targets), "no_answer")
        raise TransferFailed("nobody took the call: " + ", ".join(self._plan.targets))

    async def _ring(self, targets: list[str]) -> tuple[str, str] | None:
        loop = asyncio.get_running_loop()
        for number in targets:
            try:
                leg = await self._transport.dial_consult(number, self._plan)
            except Exception as exc:
                log.warning("warm transfer: dialling %s failed: %r", number, exc)
                self._phase(TransferPhase.NO_ANSWER, number, "dial_failed")
                continue
            self._ringing[leg] = number
            self._phase(TransferPhase.DIALING, number)
        ring_until = loop.time() + self._plan.ring_timeout_s + RING_GRACE_S
        brief_until = 0.0
        while self._ringing:
            left = (brief_until if self._answered else ring_until) - loop.time()
            try:
                r = await asyncio.wait_for(self._reports.get(), max(0.0, left))
            except TimeoutError:
                break
            target = self._ringing.get(r.leg_id)
            if target is None:
                continue  # a leg given up on already
            if r.progress is ConsultProgress.ENDED:
                del self._ringing[r.leg_id]
                if r.leg_id == self._answered:
                    self._answered = None
                    self._removed(r.leg_id, target, r.detail or "hung_up")
                self._phase(TransferPhase.NO_ANSWER, target, r.detail or "no-answer")
            elif self._answered not in (None, r.leg_id):
                # A second parallel target picked up: the first one has it.
                await self._drop(r.leg_id, "answered_elsewhere")
            else:
                if self._answered is None:
                    self._answered = r.leg_id
                    brief_until = loop.time() + BRIEF_LIMIT_S
                    self._emit(ev.ParticipantAdded(participant=target, leg_id=r.leg_id))
                    self._phase(TransferPhase.ANSWERED, target)
                    for other in [leg for leg in self._ringing if leg != r.leg_id]:
                        await self._drop(other, "answered_elsewhere")
                if r.progress is ConsultProgress.READY:
                    return r.leg_id, self._ringing.pop(r.leg_id)
        for leg in list(self._ringing):
            await self._drop(leg, "timeout")
        return None

    async def abandon(self, leg: str, target: str, why: str) -> None:
        """The caller could not be bridged with the target who took the call."""
        self._ringing[leg] = target
        await self._drop(leg, "bridge_failed")
        self._phase(TransferPhase.FAILED, target, why)

    async def _drop(self, leg: str, reason: str) -> None:
        target = self._ringing.pop(leg, "")
        try:
            await self._transport.drop_consult(leg)
        except Exception as exc:
            log.warning("warm transfer: could not end consult leg %s: %r", leg, exc)
        if leg == self._answered:
            self._answered = None
            self._removed(leg, target, reason)
        self._phase(TransferPhase.NO_ANSWER, target, reason)

    async def _drop_all(self, reason: str) -> None:
        for leg in list(self._ringing):
            await self._drop(leg, reason)

    def _removed(self, leg: str, target: str, reason: str) -> None:
        self._emit(ev.ParticipantRemoved(participant=target, leg_id=leg, reason=reason))


class WarmTransfers:
    """The call's warm transfers, one at a time, and the caller's hold while one runs."""

    def __init__(self, transport: CallTransport, engine: Callable[[], Engine],
                 sounds: CallSounds, emit: ev.EventCallback,
                 restore_background: Callable[[], None],
                 say: Callable[[str], Awaitable[None]]) -> None:
        self._transport = transport
        self._engine = engine
        self._sounds = sounds
        self._emit = emit
        self._restore_background = restore_background
        self._say = say
        self._current: _Attempt | None = None
        self._running: asyncio.Task[object] | None = None  # the task running `run`

    def progress(self, leg_id: str, progress: ConsultProgress, detail: str = "") -> None:
        """What the carrier reported of a consult leg. NotOnThisCall when no warm transfer
        is running (the carrier then releases the leg)."""
        if self._current is None:
            raise NotOnThisCall("no warm transfer is running on this call")
        self._current.progress(_Report(leg_id, progress, detail))

    async def run(self, plan: TransferPlan) -> None:
        """Returns once the caller is bridged with a target (the agent has left the call);
        raises TransferFailed, with the caller back with the agent, when nobody took it."""
        transport = self._transport
        if not isinstance(transport, ConsultingTransport):
            raise NotOnThisCall("this call's line cannot place a consult call")
        engine = self._engine()
        if self._current is not None:
            raise NotOnThisCall("a transfer is already under way")
        attempt = self._current = _Attempt(transport, plan, self._emit)
        self._running = asyncio.current_task()
        try:
            # On hold: the caller's words neither interrupt nor start an answer meanwhile (an
            # audio-mode app hears them and decides for itself).
            with (contextlib.nullcontext() if isinstance(engine, AudioRelay)
                  else engine.turns_suspended()):
                self._hold_music(True)
                try:
                    leg, target = await attempt.find_target()
                    self._running = None  # the bridge is carried out even if the call ends
                    try:
                        await transport.bridge(leg, target)
                    except Exception as exc:
                        log.warning("warm transfer: bridging with %s failed: %r", target, exc)
                        await attempt.abandon(leg, target, type(exc).__name__)
                        raise TransferFailed(f"could not connect the caller to {target}") \
                            from exc
                except BaseException:
                    self._hold_music(False)
                    raise
        except TransferFailed as exc:
            if not isinstance(engine, AudioRelay):
                engine.inject(f"The warm transfer did not go through ({exc}); the caller is back "
                              "on the line with you.")
            if plan.failure_message:
                await self._say(plan.failure_message)
            raise
        finally:
            self._current = self._running = None
        self._emit(ev.CallTransferred(target=target, mode="warm", phase=TransferPhase.BRIDGED))
        self._emit(ev.ParticipantRemoved(participant="agent", role="agent",
                                         reason="transferred"))

    async def aclose(self) -> None:
        """The call is over (the caller hung up while on hold): stop ringing the targets now
        rather than when the ring timeout runs out."""
        task = self._running
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait([task])

    def _hold_music(self, on: bool) -> None:
        with contextlib.suppress(NotOnThisCall):  # a line without mixing holds in silence
            if on:
                self._sounds.play_background(HOLD_MUSIC, HOLD_VOLUME)
            else:
                self._restore_background()
