"""What every part of a conversation shares: the loop, its tasks, the event callback, the agent
state machine, and the other parts (wired once by `Conversation`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pipelines import events as ev
from pipelines.engine.states import AgentState, AgentStateMachine, Trigger
from pipelines.outcomes import EndReason, ErrorStage
from pipelines.settings import ConversationSettings

if TYPE_CHECKING:
    from pipelines.context import ChatContext
    from pipelines.engine.barge_in import BargeIn
    from pipelines.engine.caller_audio import CallerAudio
    from pipelines.engine.ending import Ending
    from pipelines.engine.failures import ProviderFailures
    from pipelines.engine.liveness import Liveness
    from pipelines.engine.preemption import Preemption
    from pipelines.engine.speech_driver import SpeechDriver
    from pipelines.engine.turn_taking import TurnTaking

log = logging.getLogger("pipelines.conversation")


@runtime_checkable
class HasErrorCode(Protocol):
    """An error with a machine-readable code (a provider's `ProviderError`, an HTTP error)."""

    code: Any


class EngineCore:
    def __init__(self, settings: ConversationSettings, session_id: str,
                 on_event: ev.EventCallback, context: ChatContext) -> None:
        self.settings = settings
        self.session_id = session_id
        self.context = context
        self._on_event = on_event
        self.machine = AgentStateMachine(self._state_changed)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        # Tasks without which the call cannot work: one failing ends the call.
        self.core_tasks: set[asyncio.Task[Any]] = set()
        self.ending = False
        # The parts, wired by Conversation.__init__.
        self.audio: CallerAudio
        self.turns: TurnTaking
        self.preemption: Preemption
        self.barge: BargeIn
        self.speech: SpeechDriver
        self.liveness: Liveness
        self.failures: ProviderFailures
        self.end: Ending

    @property
    def state(self) -> AgentState:
        return self.machine.state

    def fire(self, trigger: Trigger) -> None:
        self.machine.fire(trigger)

    def _state_changed(self, old: AgentState, new: AgentState) -> None:
        self.emit(ev.AgentStateChanged, old_state=str(old), new_state=str(new))

    # -- loop and tasks ---------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self.loop is not None

    def require_loop(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            raise RuntimeError("conversation not started")
        return self.loop

    def now(self) -> float:
        return self.require_loop().time()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = self.require_loop().create_task(coro, name=f"conversation-{name}")
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        log.error("conversation task %s failed", task.get_name(), exc_info=exc)
        self.emit_error(ErrorStage.ENGINE, exc)
        if task in self.core_tasks and not self.ending:
            # A core loop is gone: the call cannot work any more. End it with an explanation.
            self.end.begin()
            self.spawn(self.end.shutdown(EndReason.ERROR), "shutdown")

    @staticmethod
    def cancel(task: asyncio.Task[Any] | None) -> None:
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    # -- events -----------------------------------------------------------------------------
    def emit(self, cls: type[ev.Event], /, mono: float | None = None, **fields: Any) -> None:
        event = cls(session_id=self.session_id,
                    mono=mono if mono is not None else self.now(), **fields)
        try:
            self._on_event(event)
        except Exception:
            log.exception("event callback failed for %s", cls.type)

    def emit_error(self, stage: ErrorStage, exc: BaseException) -> None:
        code = exc.code if isinstance(exc, HasErrorCode) else None
        # Provider errors never carry credentials (providers/base.py); cap the size anyway.
        self.emit(ev.SessionError, code=str(code or type(exc).__name__),
                  message=str(exc)[:500], stage=str(stage))

