"""Outbound voicemail screening: the first phase of a call placed with `voicemail: {detect: true}`.

`POST /v1/calls` records the request in the session's metadata (`_voicemail`). For such a call
the host starts the conversation without its greeting and with turns suspended, and feeds this
screen the callee's audio frames and the engine's speech/transcript events. The
`pipelines.voicemail` detector decides human or machine; the screen then emits
`voicemail.detected` (stored as `sessions.voicemail`) and:

- human: turns resume and the agent greets — after the callee's "Hello?", never over it;
- machine, `voicemail.action: leave_message` with a `voicemail.message`: waits for the beep (or
  the end of the greeting, at most `MESSAGE_SLOT_MAX_WAIT_S`), says the message, hangs up;
- machine otherwise: hangs up at once.

Either way a machine call ends with reason "voicemail".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from app.agent_config import VoicemailSettings
from pipelines import events as ev
from pipelines.conversation import Conversation
from pipelines.outcomes import EndReason
from pipelines.voicemail import VoicemailDetector

log = logging.getLogger(__name__)

DETECT_KEY = "_voicemail"  # sessions.metadata entry written by POST /v1/calls
END_REASON = EndReason.VOICEMAIL
# The longest wait for a beep (or the end of the greeting) before leaving the message anyway.
MESSAGE_SLOT_MAX_WAIT_S = 30.0


def wants_detection(direction: str, metadata: Mapping[str, Any] | None) -> bool:
    """True for outbound calls placed with voicemail detection on."""
    if direction != "outbound" or not metadata:
        return False
    request = metadata.get(DETECT_KEY)
    return isinstance(request, Mapping) and bool(request.get("detect"))


class VoicemailScreen:
    def __init__(self, settings: VoicemailSettings, session_id: str = "",
                 on_event: Callable[[ev.Event], None] | None = None) -> None:
        self.settings = settings
        self._on_event = on_event
        self.session_id = session_id
        self.detector = VoicemailDetector(timeout_ms=settings.detect_timeout_s * 1000.0)
        self.listening = True
        self._decided = asyncio.Event()
        self._ready = asyncio.Event()

    # -- fed by the host ---------------------------------------------------------------------
    def feed_frame(self, frame: np.ndarray) -> None:
        if self.listening:
            heard_before = self.detector.beep
            self.detector.push_audio(frame)
            beep = self.detector.beep
            if beep is not None and beep is not heard_before and self._on_event is not None:
                # Also after the verdict: the machine's recording starts when its beep ends.
                self._on_event(ev.VoicemailBeep(frequency_hz=round(beep.frequency_hz, 1),
                                                at_ms=round(beep.start_ms, 1)))
            self._update()

    def feed_event(self, event: ev.Event) -> None:
        if not self.listening:
            return
        if isinstance(event, ev.UserSpeechStarted):
            self.detector.speech_started()
        elif isinstance(event, ev.UserSpeechStopped):
            self.detector.speech_stopped()
        elif isinstance(event, ev.UserTranscription):
            self.detector.add_transcript(event.text, event.is_final)
        else:
            return
        self._update()

    def _update(self) -> None:
        if self.detector.verdict is not None:
            self._decided.set()
        if self.detector.ready_for_message:
            self._ready.set()

    # -- the phase ---------------------------------------------------------------------------
    async def run(self, conv: Conversation, emit: Callable[[ev.Event], None],
                  greeting: str | None) -> None:
        """Screen the callee, then hand the call to the conversation (a person) or leave the
        message and hang up (a machine). Runs alongside the audio pump; the call's frames keep
        flowing through the conversation, whose turns stay suspended meanwhile."""
        try:
            with conv.turns_suspended():
                await self._decided.wait()
                verdict = self.detector.verdict
                assert verdict is not None
                log.info("session %s: callee is a %s (%s%s)", self.session_id, verdict.result,
                         verdict.method, f": {verdict.detail}" if verdict.detail else "")
                emit(ev.VoicemailDetected(result=verdict.result, method=verdict.method))
                if verdict.result == "machine":
                    await self._leave_message(conv)
                    conv.hangup(END_REASON)
                    return
        finally:
            self.listening = False
        if greeting and greeting.strip():
            conv.say(greeting)

    async def _leave_message(self, conv: Conversation) -> None:
        message = (self.settings.message or "").strip()
        if self.settings.action != "leave_message" or not message:
            return
        try:
            await asyncio.wait_for(self._ready.wait(), MESSAGE_SLOT_MAX_WAIT_S)
        except TimeoutError:
            log.info("session %s: no beep or pause after the greeting; leaving the message",
                     self.session_id)
        self.listening = False
        # Not interruptible: the recording's own noises must not cut the message short.
        await conv.say(message, interruptible=False)
