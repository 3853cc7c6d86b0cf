"""Ending a call: politely (finish or cut the current speech, say a goodbye, then tear down) or
at once; either way every task is cancelled, every speech resolved and the providers closed
exactly once, and `ended` carries the reason."""

from __future__ import annotations

import asyncio
import logging

from pipelines.engine.core import EngineCore
from pipelines.engine.speech_driver import fixed_speech_budget_s
from pipelines.engine.states import Trigger
from pipelines.speech import SpeechHandle

log = logging.getLogger("pipelines.conversation")

GOODBYE_GRACE_S = 20.0  # longest wait for the current answer to finish before a polite hangup


class Ending:
    def __init__(self, core: EngineCore) -> None:
        self._core = core
        self.ended: asyncio.Future[str] | None = None
        self._shutting_down: asyncio.Task[None] | None = None

    def open(self) -> None:
        self.ended = self._core.require_loop().create_future()

    @property
    def done(self) -> bool:
        return self.ended is not None and self.ended.done()

    def begin(self) -> None:
        core = self._core
        core.preemption.discard()
        core.ending = True
        core.fire(Trigger.END)
        core.liveness.cancel_idle()
        core.turns.cancel_tasks()
        core.barge.end_current(False)

    def hangup(self, reason: str, *, goodbye: str | None = None, interrupt: bool = False) -> None:
        core = self._core
        if not core.started or core.ending:
            return
        self.begin()
        core.spawn(self._end_gracefully(reason, goodbye, interrupt), "hangup")

    async def _end_gracefully(self, reason: str, goodbye: str | None, interrupt: bool) -> None:
        core = self._core
        speech = core.speech
        speech.drop_queued(interruptible_only=False)
        cur = speech.current
        if cur is not None and not cur.done():
            if interrupt:
                await speech.stop(cur, "hangup", clear=True)
            else:
                try:
                    await asyncio.wait_for(cur.wait(), GOODBYE_GRACE_S)
                except TimeoutError:
                    await speech.stop(cur, "hangup", clear=True)
            await cur  # the speech loop has let go of it
        if goodbye and goodbye.strip():
            if not core.failures.tts_down:
                await self._play_closing(speech.new("goodbye", text=goodbye,
                                                    interruptible=False))
            clip = core.failures.failure_clip()
            if clip is not None:
                # The TTS is down (perhaps found out by the goodbye itself): the pre-rendered
                # line is all the agent can still say.
                samples, rate = clip
                await self._play_closing(speech.new(
                    "goodbye", text=core.settings.failure_goodbye, audio=samples,
                    sample_rate=rate, interruptible=False))
        await self.shutdown(reason)

    async def _play_closing(self, handle: SpeechHandle) -> None:
        """Play a last speech and wait (bounded) until it has been heard."""
        self._core.speech.enqueue_closing(handle)
        budget = fixed_speech_budget_s(handle)
        try:
            await asyncio.wait_for(handle.wait(), budget)
        except TimeoutError:
            log.warning("goodbye did not finish within %.0fs", budget)

    async def shutdown(self, reason: str) -> None:
        """Tear everything down once; concurrent callers (stop during a hangup) share it."""
        if self.ended is None or self.ended.done():
            return
        if self._shutting_down is None:
            # Not tracked in the core's tasks, so cancelling those cannot cut it short.
            self._shutting_down = self._core.require_loop().create_task(
                self._teardown(reason), name="conversation-teardown"
            )
        await asyncio.shield(self._shutting_down)

    async def _teardown(self, reason: str) -> None:
        core = self._core
        assert self.ended is not None
        if not core.ending:
            self.begin()
        tasks = list(core.tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await core.speech.close()
        await core.audio.aclose()
        if not self.ended.done():
            self.ended.set_result(str(reason))
