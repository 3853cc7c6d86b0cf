"""Builtin tools an agent can enable: end_call, transfer_call, send_dtmf, collect_digits,
handoff, and the collect tools (collect_email, collect_address, collect_phone, collect_name,
collect_dob, collect_credit_card; see `app.tools.collect`).

Each acts on the call through `CallControl`. Call-ending actions (hang up, transfer) return their
result first and do the irreversible part in `BuiltinOutcome.after`, which the executor runs only
once the tool call is recorded as completed — tearing the call down cancels the conversation that
awaits the tool, and the record should say the tool worked, not that it was cancelled.

Options (`tools[].options` in the agent config) are validated by the models below; call
`builtin_option_errors()` when an agent is saved to reject typos early.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.agent_config import ToolConfig
from app.tools.collect import KINDS, run_collect
from app.tools.control import (
    MAX_TRANSFER_TARGETS,
    CallControl,
    CollectTimeout,
    DialMode,
    TransferFailed,
    TransferPlan,
    normalize_target,
)
from app.tools.digits import VALID_KEYS
from app.tools.errors import ToolExecutionError
from providers.base import ToolSpec


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EndCallOptions(_Options):
    goodbye: str | None = "Goodbye!"
    reason: str = Field("agent_ended", min_length=1, max_length=64)


class TransferCallOptions(_Options):
    # name -> phone number or sip: URI, or several (rung as `dial_mode` says); the LLM picks
    # a name.
    targets: dict[str, str | list[str]] = Field(default_factory=dict)
    mode: Literal["cold", "warm"] = "cold"
    dial_mode: DialMode = "sequential"
    ring_timeout_s: int = Field(30, ge=5, le=120)
    message: str | None = "Please hold while I transfer your call."
    # Let the LLM dial any number it names. Off by default: a caller could talk the agent
    # into dialling premium-rate numbers at your expense.
    allow_any_target: bool = False

    @field_validator("targets")
    @classmethod
    def _valid_targets(cls, v: dict[str, str | list[str]]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name, t in v.items():
            numbers = [t] if isinstance(t, str) else t
            if not 1 <= len(numbers) <= MAX_TRANSFER_TARGETS:
                raise ValueError(f"{name}: between 1 and {MAX_TRANSFER_TARGETS} numbers")
            out[name] = [normalize_target(n) for n in numbers]
        return out


class SendDtmfOptions(_Options):
    pass


class CollectDigitsOptions(_Options):
    num_digits: int | None = Field(None, ge=1, le=64)
    # Counted from the start of the prompt: digits typed or said during it already count.
    timeout_s: float = Field(15.0, gt=0, le=300)
    finish_on_key: str | None = "#"
    pattern: str | None = None  # full-match regex the digits must satisfy
    prompt: str | None = None

    @field_validator("finish_on_key")
    @classmethod
    def _one_key(cls, v: str | None) -> str | None:
        if v is not None and (len(v) != 1 or v not in VALID_KEYS):
            raise ValueError("must be one of 0-9 * # A-D")
        return v

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return v


class HandoffOptions(_Options):
    # name -> a stored agent's id; the LLM picks a name.
    agents: dict[str, str] = Field(min_length=1)
    # Said by the current agent before the other one takes over.
    message: str | None = None


OPTION_MODELS: dict[str, type[BaseModel]] = {
    "handoff": HandoffOptions,
    "end_call": EndCallOptions,
    "transfer_call": TransferCallOptions,
    "send_dtmf": SendDtmfOptions,
    "collect_digits": CollectDigitsOptions,
    **{name: kind.options for name, kind in KINDS.items()},
}

# Builtins that talk with the caller themselves (AgentStack's agent tools): the caller's speech
# is their input, so it must not barge in; they are reported with agent_tool.* events.
COLLECTING_BUILTINS = frozenset({"collect_digits", *KINDS})

DESCRIPTIONS = {
    "handoff": "Hand the conversation over to another agent (a colleague with other skills), "
               "who continues with everything said so far.",
    "end_call": "End the phone call. Use when the conversation is finished or the caller "
                "asks to hang up.",
    "transfer_call": "Transfer the caller to a person or another line.",
    "send_dtmf": "Press keys on the phone keypad (e.g. to navigate an automated menu).",
    "collect_digits": "Ask the caller to enter digits on their keypad (or say them) and "
                      "return what they entered.",
    **{name: kind.description for name, kind in KINDS.items()},
}

_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


def _default_parameters(tool: ToolConfig) -> dict[str, Any]:
    name = tool.builtin
    if name == "end_call":
        return {"type": "object", "properties": {
            "reason": {"type": "string", "description": "Why the call is ending."}}}
    if name == "transfer_call":
        opts = TransferCallOptions.model_validate(tool.options)
        target: dict[str, Any] = {"type": "string"}
        if opts.targets and not opts.allow_any_target:
            target["enum"] = sorted(opts.targets)
            target["description"] = "Who to transfer the caller to."
        else:
            target["description"] = "Phone number (E.164) or SIP URI to transfer to."
        props: dict[str, Any] = {"target": target}
        if opts.mode == "warm":
            props["summary"] = {"type": "string", "description":
                                "One or two sentences telling the person who takes the call "
                                "who is calling and why."}
        return {"type": "object", "properties": props, "required": ["target"]}
    if name == "handoff":
        agents = sorted(HandoffOptions.model_validate(tool.options).agents)
        return {"type": "object", "properties": {
            "agent": {"type": "string", "enum": agents, "description": "Who takes over."},
            "summary": {"type": "string", "description": "What the caller needs, for the "
                        "agent taking over."}}, "required": ["agent"]}
    if name == "send_dtmf":
        return {"type": "object", "properties": {
            "digits": {"type": "string", "pattern": "^[0-9A-Da-d*#]{1,64}$",
                       "description": "Keys to press, e.g. \"1\" or \"123#\"."}},
                "required": ["digits"]}
    if name == "collect_digits":
        return {"type": "object", "properties": {
            "prompt": {"type": "string",
                       "description": "What to say to ask for the digits."},
            "num_digits": {"type": "integer", "minimum": 1, "maximum": 64,
                           "description": "How many digits to collect, if known."}}}
    if name in KINDS:
        return {"type": "object", "properties": {
            "prompt": {"type": "string", "maxLength": 500,
                       "description": "What to say to ask for it (optional)."}}}
    return dict(_EMPTY_SCHEMA)


def tool_parameters(tool: ToolConfig) -> dict[str, Any]:
    """The JSON Schema the LLM gets (and arguments are validated against): the configured
    one, or for a builtin left at the empty default, the builtin's own."""
    if tool.builtin and tool.parameters == _EMPTY_SCHEMA:
        return _default_parameters(tool)
    return tool.parameters


def tool_spec(tool: ToolConfig) -> ToolSpec:
    description = tool.description or DESCRIPTIONS.get(tool.builtin or "", "")
    return ToolSpec(name=tool.name, description=description, parameters=tool_parameters(tool))


def tool_specs(tools: list[ToolConfig]) -> list[ToolSpec]:
    return [tool_spec(t) for t in tools]


def builtin_option_errors(tool: ToolConfig) -> list[dict[str, str]]:
    """Problems with a builtin tool's options, as [{"field": "options.x", "message": ...}]."""
    if tool.builtin is None:
        return []
    try:
        OPTION_MODELS[tool.builtin].model_validate(tool.options)
    except ValidationError as exc:
        return [{"field": ".".join(["options", *(str(p) for p in e["loc"])]),
                 "message": e["msg"]} for e in exc.errors()]
    return []


@dataclass
class BuiltinOutcome:
    result: Any
    # Runs after the tool call is recorded as completed (hang up, transfer).
    after: Callable[[], Awaitable[None]] | None = None


def _options(tool: ToolConfig) -> Any:
    assert tool.builtin is not None
    try:
        return OPTION_MODELS[tool.builtin].model_validate(tool.options)
    except ValidationError as exc:
        raise ToolExecutionError(
            "not_available", f"tool '{tool.name}' is misconfigured: {exc.errors()[0]['msg']}"
        ) from None


async def run_builtin(
    tool: ToolConfig, arguments: dict[str, Any], control: CallControl | None
) -> BuiltinOutcome:
    if control is None or control.ended:
        raise ToolExecutionError("not_available", "the call is not available for this action")
    name = tool.builtin
    if name == "end_call":
        return _end_call(_options(tool), control)
    if name == "transfer_call":
        return _transfer_call(_options(tool), arguments, control)
    if name == "send_dtmf":
        digits = str(arguments.get("digits") or "").upper()
        if not digits or any(d not in VALID_KEYS for d in digits):
            raise ToolExecutionError("invalid_arguments", "digits must be 0-9, *, # or A-D")
        await control.send_dtmf(digits)
        return BuiltinOutcome({"sent": digits})
    if name == "collect_digits":
        return BuiltinOutcome(await _collect_digits(_options(tool), arguments, control))
    if name == "handoff":
        return _handoff(_options(tool), arguments, control)
    if name in KINDS:
        return BuiltinOutcome(await run_collect(KINDS[name], _options(tool), arguments, control))
    raise ToolExecutionError("unknown_tool", f"unknown builtin '{name}'")


def _handoff(opts: HandoffOptions, arguments: dict[str, Any],
             control: CallControl) -> BuiltinOutcome:
    name = str(arguments.get("agent") or "")
    agent_id = opts.agents.get(name)
    if agent_id is None:
        raise ToolExecutionError("invalid_arguments", f"unknown agent '{name}'; choose one of: "
                                 + ", ".join(sorted(opts.agents)))
    summary = str(arguments.get("summary") or "")

    async def after() -> None:
        # The answer being given finishes with this agent; the next one is the new agent's.
        if opts.message:
            await control.say(opts.message, interruptible=False)
        try:
            await control.handoff(agent_id, summary)
        except (ValueError, RuntimeError) as exc:
            raise ToolExecutionError("failed", str(exc)) from None

    return BuiltinOutcome({"status": "handing over", "agent": name}, after)


async def _unstoppable(aw: Awaitable[None]) -> None:
    """Run a call-ending action to completion even if our task is cancelled meanwhile.

    Hanging up usually tears down the conversation that awaits this very tool; without the
    shield that teardown would cancel the REST request halfway and leave the call up."""
    task = asyncio.ensure_future(aw)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        raise


def _end_call(opts: EndCallOptions, control: CallControl) -> BuiltinOutcome:
    async def after() -> None:
        if opts.goodbye:
            await control.say(opts.goodbye, interruptible=False)
        await _unstoppable(control.hangup(opts.reason))

    return BuiltinOutcome({"status": "ending call"}, after)


def _transfer_call(
    opts: TransferCallOptions, arguments: dict[str, Any], control: CallControl
) -> BuiltinOutcome:
    wanted = str(arguments.get("target") or "").strip()
    if not wanted:
        raise ToolExecutionError("invalid_arguments", "target is required")
    numbers = opts.targets.get(wanted)
    if numbers is None:
        numbers = next(([n] for ns in opts.targets.values() for n in ns if n == wanted), None)
    if numbers is None:
        if not opts.allow_any_target:
            names = ", ".join(sorted(opts.targets)) or "none configured"
            raise ToolExecutionError(
                "invalid_arguments", f"unknown transfer target '{wanted}'; choose one of: {names}"
            )
        try:
            numbers = [normalize_target(wanted)]
        except ValueError as exc:
            raise ToolExecutionError("invalid_arguments", str(exc)) from None
    # A warm transfer that finds nobody comes back as this tool's failure: the LLM tells the
    # caller, so no fixed apology is said besides.
    plan = TransferPlan.to(numbers, mode=opts.mode, dial_mode=opts.dial_mode,
                           ring_timeout_s=opts.ring_timeout_s,
                           brief=str(arguments.get("summary") or "") if opts.mode == "warm"
                           else "")

    async def after() -> None:
        if opts.message:
            await control.say(opts.message, interruptible=False)
        try:
            await _unstoppable(control.transfer(plan))
        except TransferFailed as exc:
            raise ToolExecutionError("no_answer", f"{exc}; the caller is back with you") \
                from None

    return BuiltinOutcome({"status": "transferring", "target": wanted, "mode": opts.mode}, after)


async def _collect_digits(
    opts: CollectDigitsOptions, arguments: dict[str, Any], control: CallControl
) -> dict[str, Any]:
    num = arguments.get("num_digits") or opts.num_digits
    prompt = arguments.get("prompt") or opts.prompt
    # Collect from the moment the prompt starts: callers type (or say) ahead, and a keypress
    # during the prompt is input for this tool, not an interruption of the call.
    collecting = asyncio.ensure_future(control.collect_digits(
        int(num) if num else None, opts.timeout_s, opts.finish_on_key))
    try:
        if prompt:
            await control.say(str(prompt))
        digits = await collecting
    except CollectTimeout as exc:
        raise ToolExecutionError(
            "timeout", "the caller did not enter the digits in time", digits=exc.digits
        ) from None
    finally:
        if not collecting.done():
            collecting.cancel()
            await asyncio.gather(collecting, return_exceptions=True)
    if opts.pattern and not re.fullmatch(opts.pattern, digits):
        raise ToolExecutionError(
            "invalid_input", "the digits entered do not have the expected format", digits=digits
        )
    return {"digits": digits}
