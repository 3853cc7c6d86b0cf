"""The bus: what the processes serving one deployment share (app.bus.redis_bus), as one small
interface with a do-nothing single-process implementation (`LocalBus`).

- Seats (`app.calls.admission.Seats`): the cluster-wide call count, and which process hosts
  each live call (its owner), kept alive by a heartbeat.
- Control: a request (say, hangup, ...) for a call another process hosts is sent to it, and its
  answer comes back (`request`).
- Answers: what the answer URL learnt about a call, for the stream WebSocket that may connect
  to another process (`share_answer` / `shared_answer`).
- Events: each process's events reach every other process's WebSocket subscribers (wired by
  app.bus.component).

With no `bus.url` the `LocalBus` stands in: there is no other process, so nothing is shared.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from app.calls.admission import LocalSeats, Seats

BUS_KEY = "app.bus"

ControlAction = Literal["say", "hangup", "transfer", "inject", "state", "update", "play",
                        "background", "background_stop", "handoff", "consult"]
# End reason of the calls of a process that stopped heartbeating (crashed, killed, cut off).
NODE_LOST_REASON = "node_lost"


@dataclass(frozen=True, slots=True)
class ControlRequest:
    session_id: str
    action: ControlAction
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ControlReply:
    """An HTTP-like status (202 done or accepted, 409 ended, 422 bad input, 502 the action
    failed, 503/504 the owner could not be reached) and a sentence for the problem detail."""

    status: int
    detail: str = ""
    # What the action answers besides its status (e.g. the fields an update changed).
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status < 300


class ClusterBus(Protocol):
    node_id: str

    @property
    def seats(self) -> Seats: ...

    async def owner(self, session_id: str) -> str | None:
        """The live process hosting the call, if any (None also when the bus is away)."""
        ...

    async def request(self, node: str, req: ControlRequest) -> ControlReply:
        """Send a control request to `node` and wait for its answer."""
        ...

    async def share_answer(self, session_id: str, answer: dict[str, Any]) -> None:
        """Keep what the answer URL learnt for the stream, wherever it connects."""
        ...

    async def shared_answer(self, session_id: str) -> dict[str, Any] | None:
        ...


class LocalBus:
    """The whole service is this process: no owner elsewhere, nothing to share."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._seats = LocalSeats()

    @property
    def seats(self) -> Seats:
        return self._seats

    async def owner(self, session_id: str) -> str | None:
        return None

    async def request(self, node: str, req: ControlRequest) -> ControlReply:
        return ControlReply(503, "no bus: other processes cannot be reached")

    async def share_answer(self, session_id: str, answer: dict[str, Any]) -> None:
        pass

    async def shared_answer(self, session_id: str) -> dict[str, Any] | None:
        return None


def node_name(configured: str) -> str:
    """`server.node_id`, else the host name (what the session rows record)."""
    return (configured or socket.gethostname())[:64]


def get_bus(state: Any) -> ClusterBus:
    """The bus of an AppState (app.bus.component installs it); a `LocalBus` when none is."""
    bus: ClusterBus | None = state.extras.get(BUS_KEY)
    if bus is None:
        bus = LocalBus(node_name(state.settings.server.node_id))
    return bus


