"""A call runner driven by a test script (installed as `app.state.pb.calls`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from app.calls.runner import CallInfo
from app.calls.transport import CallTransport

Script = Callable[[CallInfo, CallTransport, dict[str, Any]], Awaitable[str]]


class ScriptRunner:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.result: dict[str, Any] = {}

    async def run(self, info: CallInfo, transport: CallTransport) -> str:
        return await self.script(info, transport, self.result)
