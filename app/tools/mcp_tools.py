"""MCP tool servers (`mcp_servers` in the agent config), through the official `mcp` SDK's client.

At call start `open_mcp_tools` lists each server's tools (streamable HTTP or SSE), keeps those
`allowed_tools` names, and gives them LLM-facing names that do not clash with the agent's own
tools nor with each other (`llm_name`). A server that cannot be listed is reported through
`on_error` and left out: the call goes on without its tools.

Listings are cached per process in `McpListingCache`, keyed by agent id, agent version and
server URL (a version's config never changes): later calls of the same version do not list
again until the entry is `ttl_s` old. Concurrent calls that miss share one listing request.

Each tool call opens its own short MCP session (connect, call, close) bounded by the server's
`timeout_s`. The session is primed with the cached listing, which the SDK needs before a call
(output schemas to check results against, `x-mcp-header` arguments to mirror), so it does not
list again on every call. Failures become `ToolExecutionError`s (`unreachable`, `timeout`,
`failed`), which the executor hands to the LLM as structured errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import (
    AudioContent,
    CallToolResult,
    ImageContent,
    ListToolsResult,
    TextContent,
    Tool,
)

from app.agent_config import MCPServerConfig
from app.tools.errors import ToolExecutionError
from providers.base import SecretRef, ToolSpec

log = logging.getLogger(__name__)

LISTING_TTL_S = 300.0
LISTING_CACHE_SIZE = 256
MAX_LIST_PAGES = 20
MAX_TOOL_NAME = 64
EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}

# (agent id, agent version, server url)
CacheKey = tuple[str, int, str]
ResolveSecret = Callable[[SecretRef], Awaitable[str]]


@dataclass(frozen=True)
class McpTool:
    """One tool as the server lists it (`listed`: the SDK's own `Tool`, to prime sessions)."""

    name: str
    description: str
    input_schema: dict[str, Any]
    listed: Tool | None = None


class McpUnavailable(Exception):
    """A server could not be listed at call start."""


class McpListingCache:
    """Tool listings per (agent id, version, server url), for `ttl_s`, at most `max_entries`
    (least recently used dropped first). Failed listings are not cached."""

    def __init__(self, ttl_s: float = LISTING_TTL_S, max_entries: int = LISTING_CACHE_SIZE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[CacheKey, tuple[float, list[McpTool]]] = OrderedDict()
        self._inflight: dict[CacheKey, asyncio.Task[list[McpTool]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> list[McpTool] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: CacheKey, tools: list[McpTool]) -> None:
        self._entries[key] = (self._clock() + self.ttl_s, tools)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def get_or_list(self, key: CacheKey | None,
                          lister: Callable[[], Awaitable[list[McpTool]]]) -> list[McpTool]:
        if key is None:
            return await lister()
        hit = self.get(key)
        if hit is not None:
            return hit
        task = self._inflight.get(key)
        if task is None:
            async def list_and_keep() -> list[McpTool]:
                tools = await lister()
                self.put(key, tools)
                return tools

            task = self._inflight[key] = asyncio.create_task(list_and_keep(),
                                                             name=f"mcp-list-{key[2]}")
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        # A caller that gives up (its call ended) does not cancel the others' listing.
        return await asyncio.shield(task)


# -- naming -----------------------------------------------------------------------------------
def _sanitized(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    if not clean or not re.match(r"[A-Za-z_]", clean[0]):
        clean = "_" + clean
    return clean[:MAX_TOOL_NAME]


def llm_name(server_index: int, tool_name: str, taken: set[str]) -> str | None:
    """The name the LLM knows a server's tool by: the tool's own name (characters other than
    letters, digits, `_` and `-` replaced by `_`, at most 64), or, when that is taken by the
    agent's own tools or an earlier server's, `mcp<N>_<name>` with N the server's position in
    `mcp_servers` counting from 1. None when both are taken (the tool is left out)."""
    own = _sanitized(tool_name)
    for candidate in (own, f"mcp{server_index + 1}_{own}"[:MAX_TOOL_NAME]):
        if candidate not in taken:
            return candidate
    return None


# -- the SDK's client -------------------------------------------------------------------------
def display_url(url: str) -> str:
    """The URL without credentials or query (for messages and events)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def _describe(exc: BaseException) -> str:
    """The innermost cause of an error (anyio task groups wrap them in exception groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.asynccontextmanager
async def _session(server: MCPServerConfig, headers: dict[str, str],
                   timeout_s: float) -> AsyncIterator[Client]:
    if server.transport == "sse":
        async with Client(sse_client(server.url, headers=headers, timeout=timeout_s,
                                     sse_read_timeout=timeout_s),
                          read_timeout_seconds=timeout_s, cache=None) as client:
            yield client
        return
    async with httpx2.AsyncClient(headers=headers,
                                  timeout=httpx2.Timeout(timeout_s)) as http, \
            Client(streamable_http_client(server.url, http_client=http),
                   read_timeout_seconds=timeout_s, cache=None) as client:
        yield client


async def list_server_tools(server: MCPServerConfig, headers: dict[str, str]) -> list[McpTool]:
    """Every tool the server lists (all pages). Raises McpUnavailable."""
    try:
        async with asyncio.timeout(server.connect_timeout_s):
            async with _session(server, headers, server.connect_timeout_s) as client:
                tools: list[McpTool] = []
                cursor: str | None = None
                for _ in range(MAX_LIST_PAGES):
                    page = await client.list_tools(cursor=cursor)
                    tools += [McpTool(t.name, t.description or "", _schema(t.input_schema), t)
                              for t in page.tools]
                    cursor = page.next_cursor
                    if cursor is None:
                        break
                return tools
    except TimeoutError:
        raise McpUnavailable(f"no tool list within {server.connect_timeout_s:g} s") from None
    except Exception as exc:
        raise McpUnavailable(_describe(exc)) from exc


def _schema(schema: dict[str, Any] | None) -> dict[str, Any]:
    """The tool's input schema, an object schema whatever the server left out."""
    out = dict(schema or EMPTY_SCHEMA)
    out.setdefault("type", "object")
    return out


def tool_result(result: CallToolResult) -> Any:
    """What the LLM sees of a CallToolResult: its structured content when there is some, else
    its text (one block: the text; several: a list, other content summarised by type)."""
    if result.structured_content is not None:
        return result.structured_content
    parts: list[Any] = []
    for block in result.content:
        if isinstance(block, TextContent):
            parts.append(block.text)
        else:
            parts.append({"type": block.type,
                          "mime_type": block.mime_type
                          if isinstance(block, ImageContent | AudioContent) else None})
    if len(parts) == 1:
        return parts[0]
    return parts


def _error_text(result: CallToolResult) -> str:
    texts = [b.text for b in result.content if isinstance(b, TextContent)]
    return " ".join(texts)[:500] or "the tool reported an error"


def _prime(client: Client, listing: list[McpTool]) -> None:
    """Tell a new session what the server listed (the SDK would list again otherwise)."""
    absorb = getattr(client.session, "_absorb_tool_listing", None)
    tools = [t.listed for t in listing if t.listed is not None]
    if absorb is not None and tools:
        absorb(ListToolsResult(tools=tools), complete=True)


async def call_server_tool(server: MCPServerConfig, headers: dict[str, str], name: str,
                           arguments: dict[str, Any], listing: list[McpTool] | None = None
                           ) -> Any:
    """One tool call in its own session, within the server's `timeout_s`; `listing`: the
    server's tools as listed before. Raises ToolExecutionError."""
    try:
        async with asyncio.timeout(server.timeout_s):
            async with _session(server, headers, server.timeout_s) as client:
                _prime(client, listing or [])
                result = await client.call_tool(name, arguments)
    except TimeoutError:
        raise ToolExecutionError(
            "timeout", f"the MCP server did not answer within {server.timeout_s:g} s") from None
    except MCPError as exc:
        raise ToolExecutionError("failed", f"the MCP server refused the call: "
                                 f"{exc.error.message}"[:500]) from None
    except Exception as exc:
        if _innermost_is(exc, MCPError):
            raise ToolExecutionError("failed", _describe(exc)[:500]) from None
        raise ToolExecutionError(
            "unreachable", f"the MCP server {display_url(server.url)} could not be reached "
            f"({_describe(exc)})"[:500]) from None
    if result.is_error:
        raise ToolExecutionError("failed", _error_text(result))
    return tool_result(result)


def _innermost_is(exc: BaseException, kind: type[BaseException]) -> bool:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return isinstance(exc, kind)


# -- one call's toolbox -----------------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    server: MCPServerConfig
    headers: dict[str, str]
    tool: McpTool
    listing: list[McpTool]


class McpToolbox:
    """The MCP tools of one call (implements `app.tools.remote.McpTools`)."""

    def __init__(self, entries: dict[str, _Entry]) -> None:
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def specs(self) -> list[ToolSpec]:
        return [ToolSpec(name=name, description=e.tool.description,
                         parameters=e.tool.input_schema)
                for name, e in self._entries.items()]

    async def run_tool(self, call_id: str, name: str, arguments: dict[str, Any]) -> Any:
        entry = self._entries.get(name)
        if entry is None:
            raise ToolExecutionError("unknown_tool", f"no MCP tool named '{name}'")
        return await call_server_tool(entry.server, entry.headers, entry.tool.name, arguments,
                                      entry.listing)


async def resolve_headers(headers: dict[str, str | SecretRef],
                          resolve: ResolveSecret) -> dict[str, str]:
    return {name: value if isinstance(value, str) else await resolve(value)
            for name, value in headers.items()}


async def open_mcp_tools(
    servers: list[MCPServerConfig],
    *,
    taken: Iterable[str],
    resolve: ResolveSecret,
    cache: McpListingCache,
    agent: tuple[str, int] | None,
    on_error: Callable[[MCPServerConfig, str], None],
) -> McpToolbox:
    """List every server's tools (concurrently; from `cache` for a known agent version) and
    name them for the LLM. `taken`: the agent's own tool names. A server that cannot be
    listed (or whose header credentials cannot be resolved) is reported to `on_error` and
    left out."""

    async def one(server: MCPServerConfig) -> tuple[dict[str, str], list[McpTool]] | None:
        try:
            headers = await resolve_headers(server.headers, resolve)
            key = (agent[0], agent[1], server.url) if agent is not None else None
            tools = await cache.get_or_list(key, lambda: list_server_tools(server, headers))
        except Exception as exc:
            message = str(exc) if isinstance(exc, McpUnavailable) else _describe(exc)
            log.warning("MCP server %s unavailable: %s", display_url(server.url), message)
            on_error(server, message)
            return None
        return headers, tools

    listed = await asyncio.gather(*(one(s) for s in servers))
    names = set(taken)
    entries: dict[str, _Entry] = {}
    for index, (server, got) in enumerate(zip(servers, listed, strict=True)):
        if got is None:
            continue
        headers, tools = got
        allowed = set(server.allowed_tools) if server.allowed_tools is not None else None
        for tool in tools:
            if allowed is not None and tool.name not in allowed:
                continue
            name = llm_name(index, tool.name, names)
            if name is None:
                log.warning("MCP tool %s of %s left out: its names are taken", tool.name,
                            display_url(server.url))
                continue
            names.add(name)
            entries[name] = _Entry(server, headers, tool, tools)
        if allowed is not None:
            missing = allowed - {t.name for t in tools}
            if missing:
                log.warning("MCP server %s lists none of %s", display_url(server.url),
                            sorted(missing))
    return McpToolbox(entries)
