"""`CallControl`: what tools and the live-control API may do to a call this process hosts.

The call host implements it (speaking goes through the conversation so barge-in and the transcript
stay right; hangup/transfer go through the Plivo REST client; DTMF through the playout path).
Builtin tools, the tool executor and `POST /v1/sessions/{id}/say|hangup|transfer|inject` only
use this protocol, so they work the same for any transport.
"""

from __future__ import annotations

import re
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:  # listen.py imports digits.py, which imports this module
    from app.tools.listen import CallerInput

TransferMode = Literal["cold", "warm"]

_PHONE = re.compile(r"^\+?[1-9][0-9]{5,16}$")
_SIP = re.compile(r"^sips?:[^\s@]+@[^\s@]+$", re.IGNORECASE)


def normalize_target(target: str) -> str:
    """An E.164-ish number (spaces, dashes, dots and brackets removed) or a sip: URI.

    Raises ValueError for anything else, so a tool argument cannot smuggle XML or a URL in.
    """
    t = target.strip()
    if _SIP.match(t):
        return t
    compact = re.sub(r"[\s\-().]", "", t)
    if _PHONE.match(compact):
        return compact
    raise ValueError(f"not a phone number or sip: URI: {target!r}")


class NotOnThisCall(RuntimeError):
    """The action does not apply to this kind of call (e.g. a new LLM for a speech-to-speech
    call, or injecting context into an audio-mode call whose app has no LLM here)."""


class CollectTimeout(Exception):
    """collect_digits ran out of time; `.digits` holds what was entered before that."""

    def __init__(self, digits: str = "") -> None:
        super().__init__(f"timed out after {len(digits)} digit(s)")
        self.digits = digits


@runtime_checkable
class CallControl(Protocol):
    session_id: str
    call_uuid: str
    # The call's key/value state (the live copy of `sessions.state`).
    state: dict[str, Any]

    @property
    def ended(self) -> bool:
        """True once the call is over; control requests then get 409."""
        ...

    async def say(self, text: str, *, interruptible: bool = True) -> None:
        """Speak `text` to the caller; returns once it was played (or interrupted)."""
        ...

    async def hangup(self, reason: str) -> None:
        """End the call (the session records `reason` as its end reason)."""
        ...

    async def transfer(self, target: str, mode: TransferMode = "cold", brief: str = "") -> None:
        """Hand the caller to `target` (E.164 number or sip: URI) and leave the call.

        `brief` is spoken to the target when they answer, before they are connected (warm)."""
        ...

    async def send_dtmf(self, digits: str) -> None:
        """Play DTMF digits into the call (e.g. to navigate a remote IVR)."""
        ...

    async def collect_digits(
        self, num_digits: int | None, timeout_s: float, finish_on_key: str | None = "#"
    ) -> str:
        """Collect digits the caller presses or speaks; raise CollectTimeout on timeout.

        Stops at `num_digits` digits or at `finish_on_key` (not included in the result)."""
        ...

    def listen(self, *, sensitive: bool = False) -> AbstractAsyncContextManager[CallerInput]:
        """Take the caller's input for a collecting tool (`async with control.listen() as
        heard`): inside, turns are suspended (speech neither barges in nor is answered by the
        LLM) and each final transcript, or keypad entry ended by `#`, is queued on `heard`.

        With `sensitive`, the call's events show the caller's words and keys with every digit
        masked while inside (a card number must not be stored or sent anywhere)."""
        ...

    async def inject(self, text: str) -> None:
        """Add context the LLM sees on its next turn (a system note, not spoken)."""
        ...

    async def handoff(self, agent_id: str, summary: str = "") -> list[str]:
        """Another stored agent takes the call over from the next answer, with the
        conversation so far (`summary` is added as context for it). ValueError when there is
        no such agent."""
        ...
