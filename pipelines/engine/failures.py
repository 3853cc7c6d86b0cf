"""Provider failures that got past the host's fallback chains.

An answer lost to them gets a spoken apology (the caller may try again); `max_failed_replies` of
them in a row, an STT that cannot be kept alive, or a TTS that cannot speak at all end the call
with `failure_goodbye` (for a dead TTS, the clip the host pre-rendered) and the reason
"provider_error". The call is never silent without an event saying why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from pipelines import events as ev
from pipelines.engine.core import EngineCore
from pipelines.outcomes import EndReason, ErrorStage
from pipelines.speech import SpeechHandle

log = logging.getLogger("pipelines.conversation")

FailureClip = Callable[[], tuple[np.ndarray, int] | None]


class ProviderFailures:
    def __init__(self, core: EngineCore, failure_clip: FailureClip | None) -> None:
        self._core = core
        self._failed_replies = 0  # answers lost in a row
        self.tts_down = False  # every TTS option failed: the agent cannot talk any more
        # The pre-rendered `failure_goodbye` (the host renders it while the TTS still works).
        self._failure_clip = failure_clip

    def answered(self) -> None:
        self._failed_replies = 0  # the providers answered again

    def failure_clip(self) -> tuple[np.ndarray, int] | None:
        return self._failure_clip() if self.tts_down and self._failure_clip else None

    def speech_failed(self, speech: SpeechHandle, stage: ErrorStage, exc: BaseException) -> None:
        core = self._core
        speech.error = stage
        core.emit_error(stage, exc)
        # Audio already handed to the sink still plays; keep exactly that in the context.
        speech.account_heard(core.context, assume_written_plays=True)
        if stage == ErrorStage.TTS:
            # Every TTS option has just failed: an apology through the same TTS would only
            # add silence. The agent cannot talk any more; end the call, explaining why.
            self.tts_down = True
            self.exhausted(ErrorStage.TTS, "no TTS provider could speak")
        elif speech.kind not in ("apology", "goodbye") and not core.ending:
            self.reply_lost(stage)

    def reply_lost(self, stage: ErrorStage) -> None:
        """A provider failure cost the caller an answer: apologise (they may try again), or
        after `max_failed_replies` in a row end the call."""
        core = self._core
        if core.ending:
            return
        self._failed_replies += 1
        if self._failed_replies >= core.settings.max_failed_replies:
            self.exhausted(
                stage, f"{self._failed_replies} answers in a row lost to provider failures")
        else:
            try:
                core.speech.enqueue(core.speech.new("apology", text=core.settings.apology),
                                    front=True)
            except RuntimeError:
                log.warning("speech queue full: apology dropped")

    def exhausted(self, stage: ErrorStage, why: str) -> None:
        """End the call: say `failure_goodbye` (pre-rendered if the TTS is down), then hang up
        with reason "provider_error"."""
        core = self._core
        if core.ending:
            return
        core.emit(ev.SessionError, code="providers_exhausted", stage=str(stage),
                  message=f"{why}; ending the call")
        core.end.hangup(EndReason.PROVIDER_ERROR, goodbye=core.settings.failure_goodbye)
