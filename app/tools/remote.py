"""Tools run outside the server, as the executor sees them.

- `RemoteTools`: the `websocket: true` tools the agent's customer app runs. The call host
  implements it over the app's WebSocket (app/calls/customer_app).
- `McpTools`: the tools of the agent's MCP servers (`mcp_servers`), listed at call start;
  `app.tools.mcp_tools.McpToolbox` implements it with the MCP SDK's client.

The executor only awaits `run_tool`, so it neither knows nor imports how they are reached.
"""

from __future__ import annotations

from typing import Any, Protocol

from providers.base import ToolSpec


class RemoteTools(Protocol):
    async def run_tool(self, call_id: str, name: str, arguments: dict[str, Any]) -> Any:
        """The app's result for this call. Raises `ToolExecutionError` when the app answers
        `tool.error`, does not answer in time or is not connected."""
        ...


class McpTools(Protocol):
    @property
    def specs(self) -> list[ToolSpec]:
        """The tools as the LLM sees them (names already free of clashes)."""
        ...

    async def run_tool(self, call_id: str, name: str, arguments: dict[str, Any]) -> Any:
        """The server's result for the tool the LLM knows as `name`. Raises
        `ToolExecutionError` when the server is unreachable, too slow or the tool fails."""
        ...
