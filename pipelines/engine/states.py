"""The agent's state in a session, and the one table of how it moves.

    starting ─► listening ─► thinking ─► speaking ─► listening … ─► ending
                    ▲            │  ▲        │ ▲
                    └────────────┘  └ paused ┘ └ (soft barge-in hold; resumes or commits)

Parts never set a state: they report what happened (a `Trigger`) and the table says where that
leads from the current state. A trigger that does not apply in the current state is ignored
(e.g. audio starting while the agent is held by a barge-in), and `ending` is final.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum


class AgentState(StrEnum):
    STARTING = "starting"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"
    PAUSED = "paused"
    ENDING = "ending"


class Trigger(StrEnum):
    """What happened, as far as the agent's state is concerned."""

    LISTEN = "listen"  # nothing to say: no greeting, the queue ran dry, a turn came to nothing
    REPLY_STARTED = "reply_started"  # an answer to a committed turn began (LLM at work)
    AUDIO_STARTED = "audio_started"  # the agent's audio reached the sink
    HELD = "held"  # caller speech over the agent: its audio is held
    RESUMED = "resumed"  # the hold was a false interruption; the agent talks on
    END = "end"


_S = AgentState
_LIVE = (_S.STARTING, _S.LISTENING, _S.THINKING, _S.SPEAKING, _S.PAUSED)

TRANSITIONS: dict[tuple[AgentState, Trigger], AgentState] = {
    **{(s, Trigger.LISTEN): _S.LISTENING for s in _LIVE},
    **{(s, Trigger.REPLY_STARTED): _S.THINKING for s in _LIVE},
    # Audio while paused (a resumed hold) is `RESUMED`'s business, not this one's.
    **{(s, Trigger.AUDIO_STARTED): _S.SPEAKING for s in (_S.STARTING, _S.LISTENING, _S.THINKING)},
    (_S.SPEAKING, Trigger.HELD): _S.PAUSED,
    **{(s, Trigger.RESUMED): _S.SPEAKING for s in _LIVE},
    **{(s, Trigger.END): _S.ENDING for s in (*_LIVE, _S.ENDING)},
}


class AgentStateMachine:
    """The current state; `fire` applies the table and reports a change through `on_change`."""

    def __init__(self, on_change: Callable[[AgentState, AgentState], None]) -> None:
        self.state = AgentState.STARTING
        self._on_change = on_change

    def fire(self, trigger: Trigger) -> AgentState:
        old = self.state
        new = TRANSITIONS.get((old, trigger))
        if new is not None and new != old:
            self.state = new
            self._on_change(old, new)
        return self.state
