"""Registry of the calls this process is hosting, so the REST control endpoints can reach them.

The host registers a call's `CallControl` when the call starts and unregisters it when the call
ends. A session not found here either lives on another replica or is over; the control API tells
the two apart from the database.
"""

from __future__ import annotations

from typing import Any, Protocol

from app.tools.control import CallControl
from pipelines.outcomes import ConsultProgress


class LiveCall(CallControl, Protocol):
    """A hosted call as the control API reaches it: what tools may do, and reconfiguring it
    while it runs (`app.calls.call.Call`)."""

    def update(self, system_prompt: str | None = None, tools: list[Any] | None = None,
               llm: dict[str, Any] | None = None, new_agent: str = "", *,
               tts: dict[str, Any] | None = None, voice: str | None = None,
               turn_taking: dict[str, Any] | None = None) -> list[str]: ...
    async def play(self, wav_bytes: bytes, *, interruptible: bool = True) -> str: ...
    def play_background(self, sound: str, volume: float = 0.5, loop: bool = True) -> None: ...
    def stop_background(self) -> None: ...
    def consult_progress(self, leg_id: str, progress: ConsultProgress,
                         detail: str = "") -> None: ...


class LiveCallLookup(Protocol):
    def get(self, session_id: str) -> LiveCall | None: ...


class LiveCalls:
    def __init__(self) -> None:
        self._calls: dict[str, LiveCall] = {}

    def register(self, session_id: str, control: LiveCall) -> None:
        self._calls[session_id] = control

    def unregister(self, session_id: str, control: LiveCall | None = None) -> None:
        """Remove the entry (only if it is still `control`, when given)."""
        current = self._calls.get(session_id)
        if current is not None and (control is None or current is control):
            del self._calls[session_id]

    def get(self, session_id: str) -> LiveCall | None:
        return self._calls.get(session_id)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._calls

    def __len__(self) -> int:
        return len(self._calls)

    def session_ids(self) -> list[str]:
        return list(self._calls)


def live_calls(state: Any) -> LiveCallLookup | None:
    """The live-call lookup of an AppState.

    `state.calls` is the call host (the edge's `CallRunner`); it either is a lookup itself
    (has `get(session_id)`) or carries a `LiveCalls` as `.live`.
    """
    calls = getattr(state, "calls", None)
    if calls is None:
        return None
    if callable(getattr(calls, "get", None)):
        return calls
    live = getattr(calls, "live", None)
    return live if callable(getattr(live, "get", None)) else None
