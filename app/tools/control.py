"""`CallControl`: what tools and the live-control API may do to a call this process hosts.

The call host implements it (speaking goes through the conversation so barge-in and the transcript
stay right; hangup/transfer go through the Plivo REST client; DTMF through the playout path).
Builtin tools, the tool executor and `POST /v1/sessions/{id}/say|hangup|transfer|inject` only
use this protocol, so they work the same for any transport.
"""

from __future__ import annotations

import re
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:  # listen.py imports digits.py, which imports this module
    from app.tools.listen import CallerInput

TransferMode = Literal["cold", "warm"]
# Several targets: ring them one after another, or all at once (the first to answer takes it).
DialMode = Literal["sequential", "parallel"]
MAX_TRANSFER_TARGETS = 10
MAX_BRIEF_CHARS = 1000
# What the caller hears when a warm transfer asked for over REST or by the agent's app finds
# nobody (the builtin tool lets the LLM say it instead).
NOBODY_ANSWERED_MESSAGE = "I'm sorry, I couldn't reach anyone right now. I'm still here to help."

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


@dataclass(frozen=True, slots=True)
class TransferPlan:
    """Where and how to transfer the caller.

    cold: the caller leaves the agent at once; the carrier rings `targets` (one by one, or
    all at once where the first to answer takes the call).
    warm: the caller waits on hold (music) with the agent while each target is rung on a
    consult leg and hears `brief`; the first who takes it is bridged with the caller and the
    agent leaves. Nobody answering brings the caller back to the agent, who says
    `failure_message` (when set; a tool's caller lets its LLM explain instead)."""

    targets: tuple[str, ...]
    mode: TransferMode = "cold"
    brief: str = ""
    dial_mode: DialMode = "sequential"
    ring_timeout_s: int = 30
    failure_message: str = ""

    def __post_init__(self) -> None:
        if not self.targets or len(self.targets) > MAX_TRANSFER_TARGETS:
            raise ValueError(f"targets: between 1 and {MAX_TRANSFER_TARGETS} targets")
        if not 5 <= self.ring_timeout_s <= 120:
            raise ValueError("ring_timeout_s: between 5 and 120 seconds")

    @classmethod
    def to(cls, target: str | list[str] | tuple[str, ...], **kw: Any) -> TransferPlan:
        """A plan with every target normalized (ValueError naming a bad one)."""
        wanted = [target] if isinstance(target, str) else list(target)
        brief = str(kw.pop("brief", "") or "").strip()[:MAX_BRIEF_CHARS]
        return cls(targets=tuple(normalize_target(t) for t in wanted), brief=brief, **kw)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransferPlan:
        """The plan `as_dict` wrote (e.g. carried over the bus to the call's process)."""
        return cls.to(d["targets"], mode=d.get("mode") or "cold", brief=d.get("brief") or "",
                      dial_mode=d.get("dial_mode") or "sequential",
                      ring_timeout_s=int(d.get("ring_timeout_s") or 30),
                      failure_message=str(d.get("failure_message") or ""))

    def as_dict(self) -> dict[str, Any]:
        return {"targets": list(self.targets), "mode": self.mode, "brief": self.brief,
                "dial_mode": self.dial_mode, "ring_timeout_s": self.ring_timeout_s,
                "failure_message": self.failure_message}


class TransferFailed(RuntimeError):
    """A warm transfer found nobody to take the caller; the caller is back with the agent."""


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

    async def transfer(self, plan: TransferPlan) -> None:
        """Hand the caller to one of `plan.targets` (E.164 numbers or sip: URIs) and leave the
        call. A warm transfer returns once the caller is bridged, or raises TransferFailed
        when nobody took the call (the caller is then back with the agent)."""
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
