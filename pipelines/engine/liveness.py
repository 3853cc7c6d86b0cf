"""Timers that keep a call alive and bounded: idle re-prompts then goodbye, a hard maximum call
duration, and a response watchdog that apologises when a committed turn gets no audio in time."""

from __future__ import annotations

import asyncio

from pipelines import events as ev
from pipelines.engine.core import EngineCore
from pipelines.outcomes import EndReason, ErrorStage
from pipelines.speech import SpeechHandle


class Liveness:
    def __init__(self, core: EngineCore) -> None:
        self._core = core
        self._idle_task: asyncio.Task[None] | None = None
        self._idle_prompts = 0

    def start(self) -> None:
        self._core.spawn(self._max_duration_timer(), "max-duration")

    def caller_answered(self) -> None:
        self._idle_prompts = 0

    # -- idle ---------------------------------------------------------------------------------
    def arm_idle(self) -> None:
        core = self._core
        self.cancel_idle()
        if core.ending or not core.started or core.turns.busy():
            return
        self._idle_task = core.spawn(self._idle_timer(), "idle")

    def cancel_idle(self) -> None:
        self._core.cancel(self._idle_task)
        self._idle_task = None

    async def _idle_timer(self) -> None:
        core = self._core
        idle = core.settings.idle
        await asyncio.sleep(idle.timeout_s)
        if core.ending or not core.speech.idle or core.turns.busy():
            return
        self._idle_task = None
        core.turns.set_user_state("away")
        if self._idle_prompts < idle.max_prompts:
            self._idle_prompts += 1
            core.emit(ev.UserIdle, prompts_sent=self._idle_prompts)
            core.speech.enqueue(core.speech.new("idle", text=idle.prompt))
        else:
            core.emit(ev.UserIdle, prompts_sent=self._idle_prompts)
            core.end.hangup(EndReason.IDLE, goodbye=idle.goodbye)

    async def _max_duration_timer(self) -> None:
        core = self._core
        await asyncio.sleep(core.settings.max_call_duration_s)
        core.end.hangup(EndReason.MAX_DURATION, goodbye=core.settings.max_duration_goodbye,
                        interrupt=True)

    # -- response watchdog --------------------------------------------------------------------
    def watch(self, speech: SpeechHandle) -> None:
        self._core.spawn(self._watchdog(speech), "watchdog")

    async def _watchdog(self, speech: SpeechHandle) -> None:
        core = self._core
        timeout = core.settings.response_timeout_s
        while True:
            if speech.done() or speech.stop_reason is not None:
                return
            if speech.output is not None and speech.output.audio_started:
                return
            if speech.in_tools or core.barge.active:
                # Waiting on a tool (bounded by tool_timeout_s) or holding for the caller is
                # not a provider stall; the clock restarts when that wait ends.
                await asyncio.sleep(min(0.25, timeout))
                continue
            remaining = speech.watch_from + timeout - core.now()
            if remaining > 0:
                await asyncio.sleep(remaining)
                continue
            break
        core.emit(ev.SessionError, code="response_timeout", stage=str(ErrorStage.WATCHDOG),
                  message=f"no agent audio {timeout:g}s after the caller's turn")
        if core.ending:
            return
        core.failures.reply_lost(ErrorStage.WATCHDOG)
        await core.speech.stop(speech, "watchdog", clear=False)
