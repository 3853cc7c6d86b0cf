"""Tool tests reuse the event fixtures (database-backed EventsService) and a recording
CallControl."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from app.tools.control import CallControl, TransferPlan
from app.tools.digits import DigitCollector
from app.tools.listen import CallerInput
from tests.events.conftest import events, events_factory  # noqa: F401 - fixtures


class RecordingControl:
    """A CallControl that records what tools asked of the call (and collects digits for real)."""

    def __init__(self, session_id: str = "sess-1", call_uuid: str = "call-uuid-1") -> None:
        self.session_id = session_id
        self.call_uuid = call_uuid
        self.state: dict[str, Any] = {}
        self.actions: list[tuple[Any, ...]] = []
        self.digits = DigitCollector()
        self.heard: CallerInput | None = None  # while a collect_* tool listens
        self._ended = False

    @property
    def ended(self) -> bool:
        return self._ended

    async def say(self, text: str, *, interruptible: bool = True) -> None:
        self.actions.append(("say", text, interruptible))

    async def hangup(self, reason: str) -> None:
        self.actions.append(("hangup", reason))
        self._ended = True

    async def transfer(self, plan: TransferPlan) -> None:
        self.actions.append(("transfer", ",".join(plan.targets), plan.mode, plan.brief))
        self._ended = True

    async def send_dtmf(self, digits: str) -> None:
        self.actions.append(("dtmf", digits))

    async def collect_digits(
        self, num_digits: int | None, timeout_s: float, finish_on_key: str | None = "#"
    ) -> str:
        self.actions.append(("collect", num_digits, timeout_s, finish_on_key))
        return await self.digits.collect(num_digits, timeout_s, finish_on_key)

    @contextlib.asynccontextmanager
    async def listen(self, *, sensitive: bool = False) -> AsyncIterator[CallerInput]:
        self.actions.append(("listen", sensitive))
        self.heard = CallerInput()
        try:
            yield self.heard
        finally:
            self.heard = None
            self.actions.append(("listened",))

    async def inject(self, text: str) -> None:
        self.actions.append(("inject", text))

    async def handoff(self, agent_id: str, summary: str = "") -> list[str]:
        if agent_id.startswith("missing"):
            raise ValueError(f"agent_id: no agent '{agent_id}'")
        self.actions.append(("handoff", agent_id, summary))
        return ["prompt"]


assert isinstance(RecordingControl(), CallControl)
