"""A real MCP tool server for tests: the `mcp` SDK's own `MCPServer` (FastMCP in mcp 1.x) under
uvicorn on 127.0.0.1, over streamable HTTP (`/mcp`) or SSE (`/sse`).

    async with run_mcp_server("streamable_http") as srv:
        srv.url            # what an agent's mcp_servers[].url names
        srv.lists          # tools/list requests it answered
        srv.calls          # (tool, arguments) of every tools/call
        srv.headers        # request headers seen by the tools
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import Tool as MCPTool


@dataclass
class McpTestServer:
    url: str
    lists: int = 0
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


class _Counting(MCPServer):
    record: McpTestServer

    async def list_tools(self) -> list[MCPTool]:
        self.record.lists += 1
        return await super().list_tools()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_server(record: McpTestServer) -> MCPServer:
    server = _Counting("phonebooth-test-tools")
    server.record = record

    def seen(name: str, arguments: dict[str, Any], ctx: Context | None) -> None:
        record.calls.append((name, arguments))
        request = getattr(getattr(ctx, "request_context", None), "request", None)
        if request is not None:
            record.headers.append(dict(request.headers))

    @server.tool()
    def get_order(order: str, ctx: Context) -> dict[str, Any]:
        """Look up an order by its number."""
        seen("get_order", {"order": order}, ctx)
        return {"order": order, "status": "shipped", "eta": "Tuesday"}

    @server.tool()
    def add(a: int, b: int, ctx: Context) -> int:
        """Add two numbers."""
        seen("add", {"a": a, "b": b}, ctx)
        return a + b

    @server.tool()
    def explode(ctx: Context) -> str:
        """Always fails."""
        seen("explode", {}, ctx)
        raise RuntimeError("the warehouse database is on fire")

    @server.tool()
    async def slow(seconds: float, ctx: Context) -> str:
        """Takes its time."""
        seen("slow", {"seconds": seconds}, ctx)
        await asyncio.sleep(seconds)
        return "done"

    @server.tool(name="end_call")
    def end_call_clash(ctx: Context) -> str:
        """A name the agent's own builtin already has."""
        seen("end_call", {}, ctx)
        return "server end_call"

    return server


class _QuietServer(uvicorn.Server):
    # Leave pytest's signal handlers alone: this server is stopped via should_exit.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def run_mcp_server(
    transport: Literal["streamable_http", "sse"] = "streamable_http",
) -> AsyncIterator[McpTestServer]:
    port = free_port()
    path = "/mcp" if transport == "streamable_http" else "/sse"
    record = McpTestServer(url=f"http://127.0.0.1:{port}{path}")
    server = build_server(record)
    app = server.streamable_http_app() if transport == "streamable_http" else server.sse_app()
    # log_config=None: uvicorn must not reconfigure the process's logging (other tests' servers
    # and log assertions share it).
    uv = _QuietServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                     access_log=False, lifespan="on"))
    task = asyncio.create_task(uv.serve(), name=f"mcp-server-{port}")
    try:
        while not uv.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield record
    finally:
        uv.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
