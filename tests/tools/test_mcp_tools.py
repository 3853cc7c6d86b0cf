"""MCP tool servers against a real server built with the `mcp` SDK (tests/fakes/mcp_server.py),
over streamable HTTP and SSE: listing, allowed_tools, naming around clashes, the per-version
listing cache, calls through the ToolExecutor and their structured errors."""

from __future__ import annotations

from typing import Any

import pytest

from app.agent_config import MCPServerConfig, ToolConfig
from app.tools.errors import ToolExecutionError
from app.tools.executor import ToolExecutor, ToolSession
from app.tools.mcp_tools import (
    McpListingCache,
    McpTool,
    call_server_tool,
    list_server_tools,
    llm_name,
    open_mcp_tools,
)
from pipelines.events import Event
from providers.base import SecretRef
from tests.fakes.mcp_server import free_port, run_mcp_server

TRANSPORTS = ["streamable_http", "sse"]


async def no_secrets(ref: SecretRef) -> str:
    return {"mcp-token": "s3cret"}[ref.credential or ""]


def server_cfg(url: str, transport: str = "streamable_http", **kw: Any) -> MCPServerConfig:
    return MCPServerConfig.model_validate({"url": url, "transport": transport, **kw})


class Call:
    def __init__(self, name: str, arguments: Any, id: str = "c1") -> None:
        self.name, self.arguments, self.id = name, arguments, id


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_lists_and_calls_a_tool(transport: str) -> None:
    async with run_mcp_server(transport) as srv:  # type: ignore[arg-type]
        cfg = server_cfg(srv.url, transport)
        tools = await list_server_tools(cfg, {})
        by_name = {t.name: t for t in tools}
        assert {"get_order", "add", "explode", "slow", "end_call"} <= set(by_name)
        assert by_name["get_order"].description == "Look up an order by its number."
        schema = by_name["get_order"].input_schema
        assert schema["type"] == "object" and schema["required"] == ["order"]
        result = await call_server_tool(cfg, {"X-Team": "billing"}, "get_order",
                                        {"order": "A1"})
        assert result == {"order": "A1", "status": "shipped", "eta": "Tuesday"}
        assert await call_server_tool(cfg, {}, "add", {"a": 2, "b": 3}) == {"result": 5}
        assert srv.calls[0] == ("get_order", {"order": "A1"})
        assert srv.headers[0].get("x-team") == "billing"


async def test_a_tool_that_raises_or_is_unknown_is_a_structured_error() -> None:
    async with run_mcp_server() as srv:
        cfg = server_cfg(srv.url)
        with pytest.raises(ToolExecutionError) as boom:
            await call_server_tool(cfg, {}, "explode", {})
        assert boom.value.kind == "failed" and "explode" in boom.value.message
        with pytest.raises(ToolExecutionError) as unknown:
            await call_server_tool(cfg, {}, "nope", {})
        assert unknown.value.kind == "failed"


async def test_a_slow_tool_times_out() -> None:
    async with run_mcp_server() as srv:
        cfg = server_cfg(srv.url, timeout_s=0.5)
        with pytest.raises(ToolExecutionError) as slow:
            await call_server_tool(cfg, {}, "slow", {"seconds": 3})
        assert slow.value.kind == "timeout" and slow.value.status == "timeout"


async def test_an_unreachable_server_is_unreachable() -> None:
    cfg = server_cfg(f"http://127.0.0.1:{free_port()}/mcp?token=secret")
    with pytest.raises(ToolExecutionError) as err:
        await call_server_tool(cfg, {}, "add", {"a": 1, "b": 2})
    assert err.value.kind == "unreachable" and "secret" not in err.value.message


def test_names_are_prefixed_only_on_a_clash() -> None:
    assert llm_name(0, "get_order", {"end_call"}) == "get_order"
    assert llm_name(1, "end_call", {"end_call"}) == "mcp2_end_call"
    assert llm_name(0, "db.query", set()) == "db_query"
    assert llm_name(0, "9lives", set()) == "_9lives"
    assert llm_name(0, "x", {"x", "mcp1_x"}) is None
    assert len(llm_name(0, "a" * 100, set()) or "") == 64


async def test_open_filters_allowed_tools_and_names_around_the_agents_tools() -> None:
    async with run_mcp_server() as srv, run_mcp_server("sse") as sse:
        errors: list[tuple[str, str]] = []
        box = await open_mcp_tools(
            [server_cfg(srv.url, allowed_tools=["get_order", "end_call", "missing"],
                        headers={"Authorization": {"credential": "mcp-token"}}),
             server_cfg(sse.url, "sse", allowed_tools=["get_order", "add"]),
             server_cfg(f"http://127.0.0.1:{free_port()}/mcp")],
            taken=["end_call"], resolve=no_secrets, cache=McpListingCache(), agent=None,
            on_error=lambda s, m: errors.append((s.url, m)))
        names = [s.name for s in box.specs]
        assert names == ["get_order", "mcp1_end_call", "mcp2_get_order", "add"]
        assert len(errors) == 1 and "ConnectError" in errors[0][1]
        assert await box.run_tool("c1", "mcp1_end_call", {}) == {"result": "server end_call"}
        assert srv.headers[-1]["authorization"] == "s3cret"
        assert await box.run_tool("c2", "mcp2_get_order", {"order": "B2"}) == {
            "order": "B2", "status": "shipped", "eta": "Tuesday"}
        assert sse.calls == [("get_order", {"order": "B2"})]


async def test_listings_are_cached_per_agent_version() -> None:
    async with run_mcp_server() as srv:
        cache = McpListingCache()
        servers = [server_cfg(srv.url)]

        async def open_for(agent: tuple[str, int] | None) -> list[str]:
            box = await open_mcp_tools(servers, taken=[], resolve=no_secrets, cache=cache,
                                       agent=agent, on_error=lambda s, m: None)
            # A call's session is primed with the listing: calling does not list again.
            assert await box.run_tool("c1", "get_order", {"order": "A1"}) == {
                "order": "A1", "status": "shipped", "eta": "Tuesday"}
            return [s.name for s in box.specs]

        first = await open_for(("agent-1", 1))
        assert await open_for(("agent-1", 1)) == first
        assert srv.lists == 1 and len(srv.calls) == 2
        await open_for(("agent-1", 2))  # a new version lists again
        await open_for(None)  # no version to key on: never cached
        assert srv.lists == 3
        assert len(cache) == 2


async def test_cache_expires_and_stays_bounded() -> None:
    now = [0.0]
    cache = McpListingCache(ttl_s=10, max_entries=2, clock=lambda: now[0])
    listed: list[int] = []

    async def lister() -> list[McpTool]:
        listed.append(1)
        return [McpTool("t", "", {"type": "object"})]

    await cache.get_or_list(("a", 1, "u"), lister)
    await cache.get_or_list(("a", 1, "u"), lister)
    assert len(listed) == 1
    now[0] = 11.0
    await cache.get_or_list(("a", 1, "u"), lister)
    assert len(listed) == 2
    await cache.get_or_list(("a", 2, "u"), lister)
    await cache.get_or_list(("a", 3, "u"), lister)
    assert len(cache) == 2 and cache.get(("a", 1, "u")) is None


async def test_failed_listings_are_not_cached() -> None:
    cache = McpListingCache()
    servers = [server_cfg(f"http://127.0.0.1:{free_port()}/mcp", connect_timeout_s=1)]
    errors: list[str] = []
    box = await open_mcp_tools(servers, taken=[], resolve=no_secrets, cache=cache,
                               agent=("a", 1), on_error=lambda s, m: errors.append(m))
    assert not box.specs and len(errors) == 1 and len(cache) == 0


async def test_the_executor_runs_mcp_tools_and_reports_them() -> None:
    async with run_mcp_server() as srv:
        box = await open_mcp_tools([server_cfg(srv.url, allowed_tools=["add", "explode"])],
                                   taken=["add"], resolve=no_secrets, cache=McpListingCache(),
                                   agent=None, on_error=lambda s, m: None)
        events: list[Event] = []
        own = ToolConfig(name="add", webhook={"url": "http://127.0.0.1:9/add"})
        ex = ToolExecutor([own], ToolSession(session_id="s1", mcp=box), events.append)
        assert [s.name for s in ex.specs] == ["add", "mcp1_add", "explode"]
        assert await ex(Call("mcp1_add", '{"a": 4, "b": 5}', "c1")) == {"result": 9}
        assert [e.type for e in events] == ["tool.called", "tool.completed", "tool.executed"]
        assert events[2].tool_name == "mcp1_add"  # type: ignore[attr-defined]

        events.clear()
        failed = await ex(Call("explode", {}, "c2"))
        assert failed["error"]["type"] == "failed"
        assert [e.type for e in events] == ["tool.called", "tool.failed"]

        events.clear()
        bad = await ex(Call("mcp1_add", {"a": "four"}, "c3"))
        assert bad["error"]["type"] == "invalid_arguments"
        assert srv.calls == [("add", {"a": 4, "b": 5}), ("explode", {})]
        await ex.aclose()
