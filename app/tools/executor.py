"""ToolExecutor: runs the LLM's tool calls for one call and reports them as events.

`await executor(call)` (call has `.id`, `.name`, `.arguments`) returns what the LLM should see:
the tool's result, or `{"error": {"type", "message", ...}}`. It never raises for a tool's
failure, so a broken webhook cannot end a call. For each call it emits `tool.called` and then
exactly one of `tool.completed` / `tool.failed` (status error | timeout | cancelled), which the
SQL sink turns into a `tool_calls` row with latency.

Cancellation (a committed barge-in):
- cancelling the task that awaits `executor(call)` cancels the tool and re-raises, or
- `executor.cancel_all()` cancels running tools; their `executor(call)` returns a `cancelled`
  error result instead of raising, so the caller's own task is unaffected.
While a collecting builtin (`collect_digits`, `collect_email`, ...) runs, `executor.interruptible`
is False: the caller is expected to speak (their answer), which must not count as a barge-in
that cancels the tool; `agent_tool.started` / `agent_tool.completed` / `agent_tool.failed`
(agent_tool_type = the builtin) report it as the sub-agent it is.

MCP tools (`ToolSession.mcp`, the agent's `mcp_servers` listed at call start) are called like
webhook tools: arguments checked against the tool's listed schema, the server's answer or a
structured error handed to the LLM, `tool.executed` once done. The agent's own tools win a name
(after a live update too); the MCP tools were named around them at call start.

Hold line: a webhook, websocket or MCP tool still running after `tool_settings.hold_after_ms` makes
the executor call `say(hold_message)` once (0 = say it at once); a per-tool
`options.hold_message` overrides the message, and an empty message disables it. Tools the LLM
calls in parallel share one hold line: the caller hears "one moment" once, not once per tool.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx

from app.agent_config import ToolConfig, ToolsSettings
from app.merge_patch import apply_merge_patch
from app.tools.builtins import COLLECTING_BUILTINS, run_builtin, tool_parameters, tool_specs
from app.tools.call_state import StateError, StatePatcher, public_view
from app.tools.control import CallControl
from app.tools.errors import ToolExecutionError
from app.tools.remote import McpTools, RemoteTools
from app.tools.webhook import call_webhook_tool, validate_arguments
from pipelines.events import (
    AgentToolCompleted,
    AgentToolFailed,
    AgentToolStarted,
    Event,
    ToolCalled,
    ToolCompleted,
    ToolExecuted,
    ToolFailed,
)
from providers.base import ToolSpec

log = logging.getLogger(__name__)

CANCELLED_RESULT = {"error": {"type": "cancelled", "message": "the tool call was cancelled"}}


@dataclass
class ToolSession:
    """What the executor needs to know about the call it serves."""

    session_id: str
    call_uuid: str = ""
    signing_secret: str = ""
    control: CallControl | None = None
    state_store: StatePatcher | None = None
    # Speaks the hold line; defaults to control.say.
    say: Callable[[str], Awaitable[Any]] | None = None
    settings: ToolsSettings = field(default_factory=ToolsSettings)
    http: httpx.AsyncClient | None = None
    # The call's state when there is no CallControl (e.g. a text-only test harness).
    state: dict[str, Any] = field(default_factory=dict)
    # Runs the `websocket: true` tools: the agent's customer app.
    remote: RemoteTools | None = None
    # Runs the tools of the agent's MCP servers.
    mcp: McpTools | None = None

    def current_state(self) -> dict[str, Any]:
        return self.control.state if self.control is not None else self.state


class _Hold:
    """The pending hold line of the webhook tools running now (shared by parallel calls)."""

    __slots__ = ("speaking", "task", "users")

    def __init__(self) -> None:
        self.speaking = False
        self.task: asyncio.Task[Any] | None = None
        self.users = 1

    @property
    def pending(self) -> bool:
        return self.task is not None and not self.task.done() and not self.speaking

    def release(self) -> None:
        """One tool is done with it: the last one skips a line not yet started. Once it is
        being spoken, it is let finish."""
        self.users -= 1
        if self.users <= 0 and not self.speaking and self.task is not None:
            self.task.cancel()


class _Record:
    """Makes sure each call gets exactly one terminal event."""

    __slots__ = ("call_id", "error", "finished", "name", "t0")

    def __init__(self, call_id: str, name: str) -> None:
        self.call_id = call_id
        self.name = name
        self.t0 = time.monotonic()
        self.finished = False
        self.error = ""

    def latency_ms(self) -> float:
        return (time.monotonic() - self.t0) * 1000.0


def _parse_arguments(raw: Any) -> tuple[dict[str, Any], str | None]:
    if isinstance(raw, dict):
        return raw, None
    if raw is None or raw == "":
        return {}, None
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as exc:
            return {}, f"arguments are not valid JSON: {exc.msg}"
        if isinstance(parsed, dict):
            return parsed, None
    return {}, "arguments must be a JSON object"


class ToolExecutor:
    # The executor emits tool.called/completed/failed itself (with status and the tool's own
    # latency); an engine that also reports tool calls should skip its own events when this is
    # set, or consumers see each tool call twice.
    reports_events: ClassVar[bool] = True

    def __init__(
        self,
        tools: list[ToolConfig],
        session_ctx: ToolSession,
        on_event: Callable[[Event], Any],
    ) -> None:
        self._tools = {t.name: t for t in tools}
        self.ctx = session_ctx
        self._mcp = {s.name: s for s in session_ctx.mcp.specs} if session_ctx.mcp else {}
        self._on_event = on_event
        self._running: set[asyncio.Task[Any]] = set()
        self._hold_tasks: set[asyncio.Task[Any]] = set()
        self._hold: _Hold | None = None
        self._collecting = 0
        self._own_http: httpx.AsyncClient | None = None

    def replace_tools(self, tools: list[ToolConfig]) -> None:
        """The call's tools from now on (a live update). A call already running finishes with
        the tool it started with; a later call of a removed tool gets the unknown-tool error."""
        self._tools = {t.name: t for t in tools}

    @property
    def specs(self) -> list[ToolSpec]:
        """Tool definitions for the LLM (builtins get their own schemas), MCP tools last."""
        return tool_specs(list(self._tools.values())) + [
            spec for name, spec in self._mcp.items() if name not in self._tools]

    def tool(self, name: str) -> ToolConfig | None:
        return self._tools.get(name)

    @property
    def interruptible(self) -> bool:
        return self._collecting == 0

    @property
    def running(self) -> int:
        return len(self._running)

    def cancel_all(self) -> int:
        """Cancel every running tool (barge-in); returns how many were cancelled."""
        tasks = [t for t in self._running if not t.done()]
        for t in tasks:
            t.cancel()
        return len(tasks)

    async def aclose(self) -> None:
        self.cancel_all()
        for t in list(self._hold_tasks):
            t.cancel()
        if self._own_http is not None:
            await self._own_http.aclose()
            self._own_http = None

    # -- one call ----------------------------------------------------------------------------
    async def __call__(self, call: Any) -> Any:
        call_id = str(getattr(call, "id", "") or "") or f"call_{uuid.uuid4().hex[:16]}"
        name = str(getattr(call, "name", "") or "")
        arguments, parse_error = _parse_arguments(getattr(call, "arguments", None))
        rec = _Record(call_id, name)
        self._emit(ToolCalled(session_id=self.ctx.session_id, call_id=call_id, name=name,
                              arguments=arguments))
        tool = self._tools.get(name)
        mcp = self._mcp.get(name) if tool is None else None
        if tool is None and mcp is None:
            return self._fail(rec, ToolExecutionError(
                "unknown_tool", f"no tool named '{name}'; available: "
                + (", ".join(sorted({*self._tools, *self._mcp})) or "none")))
        if parse_error:
            return self._fail(rec, ToolExecutionError("invalid_arguments", parse_error))
        schema = tool_parameters(tool) if tool is not None else mcp.parameters if mcp else {}
        errors = validate_arguments(schema, arguments)
        if errors:
            return self._fail(rec, ToolExecutionError(
                "invalid_arguments", "the arguments do not match the tool's parameters",
                errors=errors))

        run = self._run(tool, arguments, rec) if tool is not None else \
            self._run_mcp(name, arguments, rec)
        inner = asyncio.create_task(run, name=f"tool-{call_id}")
        self._running.add(inner)
        try:
            return await inner
        except asyncio.CancelledError:
            if not rec.finished:
                self._cancelled(rec)
            me = asyncio.current_task()
            if me is not None and me.cancelling():
                raise  # our caller was cancelled: propagate
            return CANCELLED_RESULT  # cancel_all(): tell the caller, don't kill it
        finally:
            self._running.discard(inner)

    async def _run(self, tool: ToolConfig, arguments: dict[str, Any], rec: _Record) -> Any:
        hold = self._start_hold(tool.name, tool.options) \
            if tool.webhook is not None or tool.websocket else None
        after: Callable[[], Awaitable[None]] | None = None
        collecting = tool.builtin in COLLECTING_BUILTINS
        if collecting:
            self._collecting += 1
            # It talks with the caller itself: a sub-agent in AgentStack's words.
            self._emit(AgentToolStarted(session_id=self.ctx.session_id,
                                        agent_tool_type=tool.builtin or "",
                                        agent_tool_id=rec.call_id))
        try:
            if tool.webhook is not None:
                result, patch = await call_webhook_tool(
                    tool, arguments,
                    client=self._client(),
                    signing_secret=self.ctx.signing_secret,
                    session_id=self.ctx.session_id,
                    call_uuid=self.ctx.call_uuid,
                    call_id=rec.call_id,
                    state=public_view(self.ctx.current_state()),
                )
                if patch:
                    await self._apply_state_patch(patch)
            elif tool.websocket:
                if self.ctx.remote is None:
                    raise ToolExecutionError("not_available", "the agent's app is not connected")
                result = await self.ctx.remote.run_tool(rec.call_id, tool.name, arguments)
            else:
                outcome = await run_builtin(tool, arguments, self.ctx.control)
                result, after = outcome.result, outcome.after
        except ToolExecutionError as exc:
            return self._fail(rec, exc)
        except asyncio.CancelledError:
            self._cancelled(rec)
            raise
        except Exception as exc:
            log.exception("tool %s crashed", tool.name)
            return self._fail(rec, ToolExecutionError(
                "internal", f"the tool failed unexpectedly ({type(exc).__name__})"))
        finally:
            if collecting:
                self._collecting -= 1
                self._agent_tool_ended(tool, rec)
            if hold is not None:
                hold.release()

        rec.finished = True
        self._emit(ToolCompleted(session_id=self.ctx.session_id, call_id=rec.call_id,
                                 name=rec.name, result=result, latency_ms=rec.latency_ms()))
        if collecting:
            self._emit(AgentToolCompleted(
                session_id=self.ctx.session_id, agent_tool_type=tool.builtin or "",
                agent_tool_id=rec.call_id,
                result=result if isinstance(result, dict) else {"value": result}))
        if after is not None:
            try:
                await after()
            except ToolExecutionError as exc:
                return self._fail(rec, exc, force=True)
            except Exception as exc:
                # The action after the result (hang up, transfer) failed: correct the record
                # and let the LLM tell the caller.
                log.exception("tool %s: follow-up action failed", tool.name)
                return self._fail(rec, ToolExecutionError(
                    "failed", f"the action could not be completed ({type(exc).__name__})"),
                    force=True)
        if not tool.websocket:
            # The server ran it, follow-up action included (AgentStack's tool.executed).
            self._emit(ToolExecuted(session_id=self.ctx.session_id, call_id=rec.call_id,
                                    tool_name=rec.name, latency_ms=rec.latency_ms()))
        return result

    async def _run_mcp(self, name: str, arguments: dict[str, Any], rec: _Record) -> Any:
        hold = self._start_hold(name, {})
        try:
            if self.ctx.mcp is None:
                raise ToolExecutionError("not_available", "no MCP server serves this call")
            result = await self.ctx.mcp.run_tool(rec.call_id, name, arguments)
        except ToolExecutionError as exc:
            return self._fail(rec, exc)
        except asyncio.CancelledError:
            self._cancelled(rec)
            raise
        except Exception as exc:
            log.exception("MCP tool %s crashed", name)
            return self._fail(rec, ToolExecutionError(
                "internal", f"the tool failed unexpectedly ({type(exc).__name__})"))
        finally:
            if hold is not None:
                hold.release()
        rec.finished = True
        self._emit(ToolCompleted(session_id=self.ctx.session_id, call_id=rec.call_id,
                                 name=name, result=result, latency_ms=rec.latency_ms()))
        self._emit(ToolExecuted(session_id=self.ctx.session_id, call_id=rec.call_id,
                                tool_name=name, latency_ms=rec.latency_ms()))
        return result

    def _agent_tool_ended(self, tool: ToolConfig, rec: _Record) -> None:
        """A collecting tool that failed or was cancelled (its success is reported with its
        result, after tool.completed)."""
        if rec.finished:
            self._emit(AgentToolFailed(session_id=self.ctx.session_id,
                                       agent_tool_type=tool.builtin or "",
                                       agent_tool_id=rec.call_id,
                                       error=rec.error or "failed"))

    # -- helpers -----------------------------------------------------------------------------
    def _client(self) -> httpx.AsyncClient:
        if self.ctx.http is not None:
            return self.ctx.http
        if self._own_http is None:
            self._own_http = httpx.AsyncClient(follow_redirects=False)
        return self._own_http

    async def _apply_state_patch(self, patch: dict[str, Any]) -> None:
        if self.ctx.state_store is not None:
            try:
                await self.ctx.state_store.patch(self.ctx.session_id, patch)
            except (StateError, LookupError) as exc:
                log.warning("tool state_patch ignored for session %s: %s",
                            self.ctx.session_id, exc)
            return
        new = apply_merge_patch(self.ctx.current_state(), {
            k: v for k, v in patch.items() if not k.startswith("_")
        })
        state = self.ctx.current_state()
        state.clear()
        state.update(new)

    def _start_hold(self, name: str, options: dict[str, Any]) -> _Hold | None:
        say = self.ctx.say or (self.ctx.control.say if self.ctx.control is not None else None)
        message = str(options.get("hold_message", self.ctx.settings.hold_message) or "")
        if say is None or not message:
            return None
        shared = self._hold
        if shared is not None and shared.pending:
            shared.users += 1  # a parallel call: one hold line covers both
            return shared
        hold = self._hold = _Hold()

        async def hold_line() -> None:
            await asyncio.sleep(self.ctx.settings.hold_after_ms / 1000.0)
            hold.speaking = True
            await say(message)

        hold.task = asyncio.create_task(hold_line(), name=f"hold-{name}")
        self._hold_tasks.add(hold.task)
        hold.task.add_done_callback(self._hold_done)
        return hold

    def _hold_done(self, task: asyncio.Task[Any]) -> None:
        self._hold_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("hold line failed: %s", task.exception())

    def _fail(self, rec: _Record, exc: ToolExecutionError, *, force: bool = False) -> Any:
        if not rec.finished or force:
            rec.finished = True
            rec.error = exc.message
            self._emit(ToolFailed(session_id=self.ctx.session_id, call_id=rec.call_id,
                                  name=rec.name, error=exc.message, status=exc.status,
                                  latency_ms=rec.latency_ms()))
        return exc.to_result()

    def _cancelled(self, rec: _Record) -> None:
        if rec.finished:
            return
        rec.finished = True
        rec.error = "cancelled"
        self._emit(ToolFailed(session_id=self.ctx.session_id, call_id=rec.call_id,
                              name=rec.name, error="cancelled", status="cancelled",
                              latency_ms=rec.latency_ms()))

    def _emit(self, event: Event) -> None:
        try:
            self._on_event(event)
        except Exception:
            log.exception("tool event callback failed on %s", event.type)

