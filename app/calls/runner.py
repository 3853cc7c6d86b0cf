"""The seam between the telephony edge and whatever runs a conversation.

The stream route builds a `CallInfo` from the session row, wraps the live stream in a
`CallTransport`, and awaits `runner.run(info, transport)`. The runner, not the edge, turns the
session's agent version into its `AgentConfig`. The runner returns the end reason
recorded on the session. `app.state.pb.calls` holds the server's runner (the call host);
edge tests install an echo runner there (tests/telephony/echo_runner.py) to test the
telephony path alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from app.calls.transport import CallTransport


@dataclass(frozen=True, slots=True)
class CallInfo:
    session_id: str
    agent_id: str | None
    agent_version: int | None
    # The agent version's stored config when whoever answered the call handed it over in this
    # process (no database read, which matters while the database is away); None: the runner
    # reads agent_id/agent_version itself.
    agent_config: dict[str, Any] | None
    direction: str
    from_number: str
    to_number: str
    call_uuid: str
    stream_id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    # `extra_headers` from the stream's start event (k=v pairs set on <Stream>)
    extra_headers: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class CallRunner(Protocol):
    async def run(self, info: CallInfo, transport: CallTransport) -> str:
        """Run the call until it ends; return the end reason (e.g. "caller_hangup")."""
        ...
