"""MCP tool servers on live calls: the agent's `mcp_servers` are real MCP servers (the `mcp`
SDK's own, tests/fakes/mcp_server.py) on 127.0.0.1; the caller talks through the Plivo
simulator, the LLM (fake OpenAI) calls their tools, and the server lists, caches and calls them
like the agent's own tools."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from app.config import Settings
from tests.e2e.test_tools_call import chat_messages, greet_and_ask, spoken, tool_results, tool_rows
from tests.e2e.tools_fixtures import CallStack, Recorder, call_stack, of_type
from tests.fakes.fake_openai import ChatReply, FakeToolCall
from tests.fakes.mcp_server import free_port, run_mcp_server

pytestmark = pytest.mark.slow

NO_HOLD = {"hold_after_ms": 10000}


def offered(stack: CallStack, n: int) -> list[str]:
    """The tool names the n-th chat request offered the LLM."""
    body = stack.openai.for_endpoint("chat")[n].json
    return [t["function"]["name"] for t in body.get("tools") or ()]


async def test_mcp_tool_result_reaches_the_llm_and_the_listing_is_cached(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack, \
            run_mcp_server("streamable_http") as srv:
        await stack.add_agent(
            tools=[{"name": "end_call", "builtin": "end_call"}], tool_settings=NO_HOLD,
            mcp_servers=[{"url": srv.url, "headers": {"X-Api-Key": {"env": "PB_E2E_MCP_KEY"}},
                          "allowed_tools": ["get_order", "explode", "end_call"]}])
        monkeypatch.setenv("PB_E2E_MCP_KEY", "mcp-secret")
        rec = Recorder(stack)
        stack.deepgram.queue_transcript("Where is my order A123?", "Try the other system.")
        stack.openai.queue_chat(
            ChatReply(tool_calls=[FakeToolCall("get_order", {"order": "A123"}, "call_1")]),
            "Your order ships on Tuesday.",
            ChatReply(tool_calls=[FakeToolCall("explode", {}, "call_2")]),
            "Sorry, that system is down.")
        async with stack.call() as call:
            sid = await greet_and_ask(stack, call, rec, "Where is my order A123?")
            await rec.wait_type("turn.completed", sid=sid, within_s=30)

        # The server's tools joined the agent's own; its end_call was renamed around the
        # builtin's name.
        assert offered(stack, 0) == ["end_call", "get_order", "explode", "mcp1_end_call"]
        assert srv.calls == [("get_order", {"order": "A123"})]
        assert srv.headers[0]["x-api-key"] == "mcp-secret"
        assert tool_results(chat_messages(stack, 1)) == [
            {"order": "A123", "status": "shipped", "eta": "Tuesday"}]
        envs = rec.session(sid)
        assert "Your order ships on Tuesday." in spoken(envs)
        (done,) = of_type(envs, "tool.completed")
        assert done.event.name == "get_order"
        (executed,) = of_type(envs, "tool.executed")
        assert (executed.event.call_id, executed.event.tool_name) == ("call_1", "get_order")
        assert not of_type(envs, "session.error", "tool.failed")
        (row,) = await tool_rows(stack, sid)
        assert (row["name"], row["status"]) == ("get_order", "ok")

        # A second call of the same agent version: no new listing; a tool that raises is a
        # structured error the LLM answers.
        async with stack.call() as call2:
            sid2 = await greet_and_ask(stack, call2, rec, "Try the other system.")
            await rec.wait_type("turn.completed", sid=sid2, within_s=30)
        assert srv.lists == 1
        assert offered(stack, 2) == offered(stack, 0)
        (error,) = tool_results(chat_messages(stack, 3))
        assert error["error"]["type"] == "failed" and "explode" in error["error"]["message"]
        envs2 = rec.session(sid2)
        (failed,) = of_type(envs2, "tool.failed")
        assert (failed.event.name, failed.event.status) == ("explode", "error")
        assert "Sorry, that system is down." in spoken(envs2)


async def test_unreachable_server_is_reported_and_the_call_goes_on_with_the_others(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    async with call_stack(settings_factory, monkeypatch) as stack, \
            run_mcp_server("sse") as srv:
        dead = f"http://127.0.0.1:{free_port()}/mcp"
        await stack.add_agent(tool_settings=NO_HOLD, mcp_servers=[
            {"url": dead},
            {"url": srv.url, "transport": "sse", "allowed_tools": ["add"]}])
        rec = Recorder(stack)
        stack.deepgram.queue_transcript("What is two plus three?")
        stack.openai.queue_chat(
            ChatReply(tool_calls=[FakeToolCall("add", {"a": 2, "b": 3}, "call_add")]),
            "Two plus three is five.")
        async with stack.call() as call:
            sid = await greet_and_ask(stack, call, rec, "What is two plus three?")
            await rec.wait_type("turn.completed", sid=sid, within_s=30)

        envs = rec.session(sid)
        (error,) = of_type(envs, "session.error")
        assert (error.event.stage, error.event.code) == ("tool", "mcp_unreachable")
        assert dead in error.event.message
        assert offered(stack, 0) == ["add"]
        assert tool_results(chat_messages(stack, 1)) == [{"result": 5}]
        assert srv.calls == [("add", {"a": 2, "b": 3})]
        assert "Two plus three is five." in spoken(envs)
        assert [e.event.tool_name for e in of_type(envs, "tool.executed")] == ["add"]
        await stack.settled()
        session = await stack.get(f"/v1/sessions/{sid}")
        assert session["status"] in ("active", "ended")
