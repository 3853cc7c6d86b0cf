"""OpenTelemetry tracing of a real call: the caller (Piper speech through the Plivo simulator)
asks, the agent calls a webhook tool and answers; the server's spans are kept in memory by the
SDK's InMemorySpanExporter in place of the OTLP exporter."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from app import telemetry
from app.config import Settings, TelemetrySettings
from tests.e2e.test_tools_call import greet_and_ask, order_tool, signed_responder
from tests.e2e.tools_fixtures import Recorder, call_stack, script_order_lookup
from tests.events.local_http import LocalHttpServer

pytestmark = pytest.mark.slow

P = "phonebooth."


def in_memory(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()

    def make(settings: TelemetrySettings) -> SpanExporter:
        return exporter
    monkeypatch.setattr(telemetry, "span_exporter", make)
    return exporter


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def within(child: ReadableSpan, parent: ReadableSpan, slack_ns: int = 2_000_000) -> bool:
    assert child.start_time is not None and child.end_time is not None
    assert parent.start_time is not None and parent.end_time is not None
    return parent.start_time - slack_ns <= child.start_time <= child.end_time \
        <= parent.end_time + slack_ns


async def test_a_call_with_a_tool_is_one_trace(settings_factory: Callable[..., Settings],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = in_memory(monkeypatch)
    async with call_stack(settings_factory, monkeypatch,
                          telemetry={"otlp_endpoint": "http://127.0.0.1:9"}) as stack:
        assert stack.state.tracing is not None
        with LocalHttpServer(signed_responder(stack)) as tool_server:
            await stack.add_agent(tools=[order_tool(tool_server.url + "/orders")],
                                  tool_settings={"hold_after_ms": 5000})
            rec = Recorder(stack)
            script_order_lookup(stack, "Your order ships on Tuesday.")
            async with stack.call() as call:
                sid = await greet_and_ask(stack, call, rec, "Where is my order A123?")
                await rec.wait_type("turn.completed", sid=sid, within_s=30)
            await rec.wait_type("session.ended", sid=sid, within_s=30)
        agent_version = (await stack.get(f"/v1/sessions/{sid}"))["agent_version"]
    # The server has stopped: its tracer provider was shut down, flushing every span.
    spans = list(exporter.get_finished_spans())
    assert len({s.context.trace_id for s in spans}) == 1  # one call, one trace

    root = one(spans, "call")
    assert root.parent is None and root.kind is SpanKind.SERVER
    attrs = dict(root.attributes or {})
    assert attrs[P + "session_id"] == sid and attrs[P + "call_uuid"] == call.call_uuid
    assert attrs[P + "call.direction"] == "inbound"
    assert attrs[P + "agent.version"] == agent_version and attrs[P + "agent.id"]
    assert attrs[P + "call.end_reason"] and attrs[P + "call.duration_s"] > 0
    assert root.resource.attributes["service.name"] == "phonebooth"
    assert root.status.status_code is StatusCode.UNSET

    turn = one(spans, "turn")
    assert turn.parent is not None and turn.parent.span_id == root.context.span_id
    assert within(turn, root)
    t = dict(turn.attributes or {})
    assert t[P + "turn.user_text_length"] == len("Where is my order A123?")
    assert t[P + "turn.agent_text_length"] >= len("Your order ships on Tuesday.")
    assert t[P + "turn.interrupted"] is False and isinstance(t[P + "turn.preemptive"], bool)
    assert t[P + "turn.first_audio_out_ms"] > 0
    # No transcript anywhere, only lengths.
    for s in spans:
        assert not any("order" in str(v).lower() for v in (s.attributes or {}).values()
                       if isinstance(v, str) and v != "get_order")

    stages = {s.name: s for s in spans if s.parent is not None
              and s.parent.span_id == turn.context.span_id}
    assert {"end_of_turn", "stt", "llm", "tts", "first_audio", "tool"} <= set(stages)
    for s in stages.values():
        assert within(s, turn), s.name
    eot, stt, llm, tts, first = (stages[n] for n in
                                 ("end_of_turn", "stt", "llm", "tts", "first_audio"))
    assert eot.start_time == stt.start_time == first.start_time  # the end of the speech
    assert llm.start_time is not None and stt.end_time is not None
    assert llm.start_time >= stt.end_time - 2_000_000  # asked once the words were final
    assert tts.start_time is not None and llm.end_time is not None
    assert tts.start_time >= llm.end_time - 2_000_000  # spoken once the answer began
    assert first.end_time is not None and tts.end_time is not None
    assert first.end_time >= tts.end_time - 2_000_000
    assert dict(llm.attributes or {})[P + "llm.ttft_ms"] > 0
    assert dict(tts.attributes or {})[P + "tts.ttfb_ms"] > 0

    tool = stages["tool"]
    a = dict(tool.attributes or {})
    assert (a[P + "tool.name"], a[P + "tool.call_id"], a[P + "tool.status"]) == (
        "get_order", "call_1", "ok")
    assert a[P + "tool.latency_ms"] >= 0
    assert tool.status.status_code is StatusCode.OK
    # The tool ran between the first LLM round's first token and the turn's end.
    assert tool.start_time is not None and tool.start_time >= llm.start_time
