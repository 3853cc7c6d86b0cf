"""Builtin tools (end_call, transfer_call, send_dtmf, collect_digits) through the executor."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.agent_config import ToolConfig
from app.tools.builtins import builtin_option_errors, tool_specs
from app.tools.digits import DigitCollector, spoken_digits
from app.tools.executor import ToolExecutor, ToolSession
from pipelines import events as ev
from providers.base import ToolCall
from tests.tools.conftest import RecordingControl


def builtin(name: str, tool: str | None = None, **options: Any) -> ToolConfig:
    return ToolConfig(name=tool or name, builtin=name, options=options)  # type: ignore[arg-type]


def make(tools: list[ToolConfig]) -> tuple[ToolExecutor, RecordingControl]:
    control = RecordingControl()

    def on_event(e: ev.Event) -> None:
        control.actions.append(("event", e.type, getattr(e, "status", None)))

    return ToolExecutor(tools, ToolSession(session_id="s", control=control), on_event), control


async def test_end_call_records_success_then_says_goodbye_and_hangs_up() -> None:
    executor, control = make([builtin("end_call", goodbye="Thanks for calling, bye!")])
    result = await executor(ToolCall(id="c", name="end_call", arguments={"reason": "done"}))
    assert result == {"status": "ending call"}
    assert control.actions == [
        ("event", "tool.called", None),
        ("event", "tool.completed", None),
        ("say", "Thanks for calling, bye!", False),
        ("hangup", "agent_ended"),
        ("event", "tool.executed", None),
    ]


async def test_transfer_call_to_a_configured_target() -> None:
    executor, control = make([builtin("transfer_call", targets={"sales": "+1 (415) 555-0100"},
                                      message="Connecting you to sales.")])
    (spec,) = executor.specs
    assert spec.parameters["properties"]["target"]["enum"] == ["sales"]
    result = await executor(ToolCall(id="c", name="transfer_call", arguments={"target": "sales"}))
    assert result == {"status": "transferring", "target": "sales", "mode": "cold"}
    assert control.actions[-3:-1] == [("say", "Connecting you to sales.", False),
                                    ("transfer", "+14155550100", "cold", "")]


async def test_transfer_call_refuses_unconfigured_numbers() -> None:
    executor, control = make([builtin("transfer_call", targets={"sales": "+14155550100"})])
    result = await executor(ToolCall(id="c", name="transfer_call",
                                     arguments={"target": "+19005550199"}))
    assert result["error"]["type"] == "invalid_arguments"  # not in the enum
    assert not [a for a in control.actions if a[0] == "transfer"]

    executor, control = make([builtin("transfer_call", allow_any_target=True)])
    result = await executor(ToolCall(id="c", name="transfer_call",
                                     arguments={"target": "<Dial>evil</Dial>"}))
    assert result["error"]["type"] == "invalid_arguments"
    await executor(ToolCall(id="d", name="transfer_call", arguments={"target": "sip:a@b.com"}))
    assert control.actions[-2] == ("transfer", "sip:a@b.com", "cold", "")


async def test_warm_transfer_passes_the_brief() -> None:
    executor, control = make([builtin("transfer_call", targets={"support": "+14155550111"},
                                      mode="warm")])
    (spec,) = executor.specs
    assert "summary" in spec.parameters["properties"]
    await executor(ToolCall(id="c", name="transfer_call", arguments={
        "target": "support", "summary": "Ada, order A-17 arrived damaged."}))
    assert control.actions[-2] == ("transfer", "+14155550111", "warm",
                                   "Ada, order A-17 arrived damaged.")


async def test_send_dtmf() -> None:
    executor, control = make([builtin("send_dtmf")])
    assert await executor(ToolCall(id="c", name="send_dtmf", arguments={"digits": "12#"})) \
        == {"sent": "12#"}
    bad = await executor(ToolCall(id="d", name="send_dtmf", arguments={"digits": "12x"}))
    assert bad["error"]["type"] == "invalid_arguments"
    assert [a for a in control.actions if a[0] == "dtmf"] == [("dtmf", "12#")]


async def _collect(executor: ToolExecutor, control: RecordingControl, feed: Any,
                   arguments: dict[str, Any] | None = None) -> Any:
    task = asyncio.create_task(executor(ToolCall(id="c", name="collect_digits",
                                                 arguments=arguments or {})))
    for _ in range(100):
        if control.digits.active:
            break
        await asyncio.sleep(0.01)
    assert not executor.interruptible  # speech now is input, not a barge-in
    feed(control.digits)
    result = await task
    assert executor.interruptible
    return result


async def test_collect_digits_from_keypad_and_speech() -> None:
    executor, control = make([builtin("collect_digits", prompt="Please enter your PIN.",
                                      pattern=r"\d{4}", timeout_s=5)])

    def keypad(c: DigitCollector) -> None:
        for d in "1234#":
            c.feed_dtmf(d)

    assert await _collect(executor, control, keypad) == {"digits": "1234"}
    assert ("say", "Please enter your PIN.", True) in control.actions
    # Collecting is a sub-agent in AgentStack's words: started, then completed after the
    # tool's own record; the server ran it (tool.executed).
    events = [a[1] for a in control.actions if a[0] == "event"]
    assert events == ["tool.called", "agent_tool.started", "tool.completed",
                      "agent_tool.completed", "tool.executed"]
    assert ("collect", None, 5.0, "#") in control.actions

    result = await _collect(executor, control,
                            lambda c: c.feed_transcript("my pin is four five six seven"),
                            {"num_digits": 4})
    assert result == {"digits": "4567"}

    result = await _collect(executor, control, lambda c: c.feed_dtmf("12#"))
    assert result["error"] == {"type": "invalid_input", "digits": "12",
                               "message": "the digits entered do not have the expected format"}


async def test_collect_digits_times_out_with_partial_input() -> None:
    executor, control = make([builtin("collect_digits", num_digits=6, timeout_s=0.2)])
    result = await _collect(executor, control, lambda c: c.feed_dtmf("9"))
    assert result["error"]["type"] == "timeout" and result["error"]["digits"] == "9"
    assert control.actions[-2:] == [("event", "tool.failed", "timeout"),
                                    ("event", "agent_tool.failed", None)]


async def test_builtins_need_a_live_call() -> None:
    executor = ToolExecutor([builtin("end_call")], ToolSession(session_id="s"), lambda e: None)
    result = await executor(ToolCall(id="c", name="end_call", arguments={}))
    assert result["error"]["type"] == "not_available"


def test_spoken_digits() -> None:
    assert spoken_digits("four one five, double two") == "41522"
    assert spoken_digits("1 2 3") == "123"
    assert spoken_digits("my code is oh seven triple nine star") == "07999*"
    assert spoken_digits("no digits here") == ""


async def test_digit_collector_ignores_input_when_idle() -> None:
    c = DigitCollector()
    c.feed_dtmf("5")
    task = asyncio.create_task(c.collect(2, 5, None))
    await asyncio.sleep(0)
    c.feed_dtmf("7")
    c.feed_transcript("eight nine")
    assert await task == "78"


def test_specs_and_option_validation() -> None:
    custom = ToolConfig(name="bye", builtin="end_call", description="Hang up politely",
                        parameters={"type": "object", "properties": {"note": {"type": "string"}}})
    specs = {s.name: s for s in tool_specs([custom, builtin("send_dtmf")])}
    assert specs["bye"].parameters["properties"] == {"note": {"type": "string"}}
    assert specs["bye"].description == "Hang up politely"
    assert specs["send_dtmf"].parameters["required"] == ["digits"]
    assert specs["send_dtmf"].description

    assert builtin_option_errors(builtin("collect_digits", pattern="(")) == [
        {"field": "options.pattern",
         "message": "Value error, invalid regular expression: missing ), unterminated "
                    "subpattern at position 0"}]
    errs = builtin_option_errors(builtin("transfer_call", targets={"x": "not a number"}))
    assert errs and errs[0]["field"] == "options.targets"
    assert builtin_option_errors(builtin("end_call", goodbye=None)) == []
    assert [e["field"] for e in builtin_option_errors(builtin("send_dtmf", speed=2))] == \
        ["options.speed"]


@pytest.mark.parametrize("name", ["end_call", "transfer_call"])
async def test_follow_up_failure_corrects_the_record(name: str) -> None:
    class Broken(RecordingControl):
        async def hangup(self, reason: str) -> None:
            raise RuntimeError("Plivo said no")

        async def transfer(self, plan: Any) -> None:
            raise RuntimeError("Plivo said no")

    control = Broken()
    seen: list[ev.Event] = []
    options = {"targets": {"a": "+14155550100"}} if name == "transfer_call" else {}
    executor = ToolExecutor([builtin(name, **options)],
                            ToolSession(session_id="s", control=control), seen.append)
    result = await executor(ToolCall(id="c", name=name, arguments={"target": "a"}))
    assert result["error"]["type"] == "failed"
    assert [e.type for e in seen] == ["tool.called", "tool.completed", "tool.failed"]


async def test_handoff_names_an_agent_and_hands_over_after_its_record() -> None:
    tool = builtin("handoff", agents={"support": "agent-support", "broken": "missing-1"},
                   message="Let me get a colleague.")
    executor, control = make([tool])
    assert executor.specs[0].parameters["properties"]["agent"]["enum"] == ["broken", "support"]
    result = await executor(ToolCall(id="h", name="handoff",
                                     arguments={"agent": "support", "summary": "App broken."}))
    assert result == {"status": "handing over", "agent": "support"}
    assert control.actions[-3:] == [("say", "Let me get a colleague.", False),
                                    ("handoff", "agent-support", "App broken."),
                                    ("event", "tool.executed", None)]

    result = await executor(ToolCall(id="h2", name="handoff", arguments={"agent": "nobody"}))
    assert result["error"]["type"] == "invalid_arguments"
    result = await executor(ToolCall(id="h3", name="handoff", arguments={"agent": "broken"}))
    assert result["error"]["type"] == "failed" and "missing-1" in result["error"]["message"]


def test_handoff_needs_at_least_one_agent() -> None:
    from app.tools.builtins import builtin_option_errors

    assert builtin_option_errors(builtin("handoff"))[0]["field"] == "options.agents"
