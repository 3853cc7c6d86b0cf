"""Tools that the agent's customer app runs (`websocket: true`), as the executor sees them.

The call host implements `RemoteTools` over the app's WebSocket (app/calls/customer_app); the
executor only awaits `run_tool`, so it neither knows nor imports how the app is reached.
"""

from __future__ import annotations

from typing import Any, Protocol


class RemoteTools(Protocol):
    async def run_tool(self, call_id: str, name: str, arguments: dict[str, Any]) -> Any:
        """The app's result for this call. Raises `ToolExecutionError` when the app answers
        `tool.error`, does not answer in time or is not connected."""
        ...
