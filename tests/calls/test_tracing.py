"""Call tracing on its own: the spans drawn from a call's events, the `telemetry` settings, the
tracer provider's lifecycle (off by default) and the OTLP/HTTP export to a real local server.
The whole call through the server is tests/e2e/test_tracing_call.py."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from app import telemetry
from app.calls.tracing import CallTracer, tracing_component
from app.config import CONFIG_ENV, ConfigError, Settings, TelemetrySettings, load_settings
from pipelines import events as ev
from tests.events.local_http import LocalHttpServer, Received

P = "phonebooth."


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> CallTracer:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return CallTracer(provider.get_tracer("test"))


class Clock:
    """Events at chosen monotonic times (seconds after the call starts)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, cls: type[ev.Event], at: float, **fields: Any) -> ev.Event:
        return cls(session_id="s1", mono=self.t0 + at, **fields)


def by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for s in exporter.get_finished_spans():
        out.setdefault(s.name, []).append(s)
    return out


def ms(span: ReadableSpan, t0_ns: int) -> tuple[float, float]:
    assert span.start_time is not None and span.end_time is not None
    return (round((span.start_time - t0_ns) / 1e6), round((span.end_time - t0_ns) / 1e6))


def test_spans_follow_the_events_clock(tracer: CallTracer,
                                       exporter: InMemorySpanExporter) -> None:
    at = Clock()
    for e in [
        at(ev.SessionStarted, 0.0, call_uuid="u1", direction="outbound", agent_id="a1",
           agent_version=3, from_number="+1555", to_number="+1666"),
        at(ev.UserSpeechStarted, 1.0),
        at(ev.UserSpeechStopped, 2.0),
        at(ev.UserSpeechStarted, 2.2),  # the caller goes on: the same turn
        at(ev.UserSpeechStopped, 3.0),
        at(ev.UserTurnCompleted, 3.5, turn_id="t1", text="hello there", trigger="model",
           eou_probability=0.9),
        at(ev.ToolCalled, 3.6, call_id="c1", name="lookup", arguments={"pin": "1234"}),
        at(ev.ToolFailed, 3.9, call_id="c1", name="lookup", error="boom", latency_ms=300.0,
           status="timeout"),
        at(ev.SessionError, 4.0, code="tts_failed", stage="tts", message="TTS down"),
        at(ev.TurnCompleted, 5.0, turn_id="t1", user_text="hello there", agent_text="Hi!",
           heard_text="Hi", interrupted=True),
        at(ev.TurnMetrics, 5.0, turn_id="t1", vad_stop_to_eou_ms=400.0,
           eou_to_stt_final_ms=-100.0, llm_ttft_ms=200.0, tts_ttfb_ms=100.0,
           first_audio_out_ms=900.0, stt_final_at_ms=300.0, llm_request_at_ms=450.0,
           llm_first_token_at_ms=650.0, tts_request_at_ms=700.0, tts_first_byte_at_ms=800.0),
        at(ev.ToolCalled, 6.0, call_id="c2", name="end_call"),  # outside any turn
        at(ev.SessionEnded, 7.0, reason="agent_ended", duration_s=7.0),
        at(ev.UserSpeechStarted, 8.0),  # after the end: ignored
    ]:
        tracer.on_event(e)

    spans = by_name(exporter)
    (call,) = spans["call"]
    assert call.start_time is not None
    t0 = call.start_time
    assert ms(call, t0) == (0, 7000)
    assert dict(call.attributes or {}) == {
        P + "session_id": "s1", P + "call_uuid": "u1", P + "agent.id": "a1",
        P + "agent.version": 3, P + "call.direction": "outbound",
        P + "call.end_reason": "agent_ended", P + "call.duration_s": 7.0}
    assert call.status.status_code is StatusCode.ERROR
    assert [e.name for e in call.events] == ["session.error"]

    (turn,) = spans["turn"]
    assert turn.parent is not None and turn.parent.span_id == call.context.span_id
    assert ms(turn, t0) == (1000, 5000)  # first speech of the turn -> turn.completed
    a = dict(turn.attributes or {})
    assert a[P + "turn.user_text_length"] == 11 and a[P + "turn.agent_text_length"] == 3
    assert a[P + "turn.heard_text_length"] == 2 and a[P + "turn.interrupted"] is True
    assert a[P + "turn.llm_ttft_ms"] == 200.0 and P + "turn.played_ack_ms" not in a
    assert turn.status.status_code is StatusCode.ERROR  # the error happened in this turn
    (err,) = turn.events
    assert dict(err.attributes or {})[P + "error.code"] == "tts_failed"

    # Stages, from the end of the caller's speech (3.0 s).
    assert ms(spans["end_of_turn"][0], t0) == (3000, 3400)
    assert ms(spans["stt"][0], t0) == (3000, 3300)
    assert ms(spans["llm"][0], t0) == (3450, 3650)
    assert ms(spans["tts"][0], t0) == (3700, 3800)
    assert ms(spans["first_audio"][0], t0) == (3000, 3900)
    for name in ("end_of_turn", "stt", "llm", "tts", "first_audio"):
        parent = spans[name][0].parent
        assert parent is not None and parent.span_id == turn.context.span_id

    in_turn, after = spans["tool"]
    assert in_turn.parent is not None and in_turn.parent.span_id == turn.context.span_id
    assert ms(in_turn, t0) == (3600, 3900)
    assert in_turn.status.status_code is StatusCode.ERROR
    assert dict(in_turn.attributes or {})[P + "tool.status"] == "timeout"
    # Arguments and error texts are not recorded.
    assert not any("1234" in str(v) or "boom" in str(v)
                   for s in exporter.get_finished_spans() for v in (s.attributes or {}).values())
    # The call ended with the second tool still running.
    assert after.parent is not None and after.parent.span_id == call.context.span_id
    assert ms(after, t0) == (6000, 7000)
    assert dict(after.attributes or {})[P + "tool.status"] == "unfinished"


def test_keypress_turn_metrics_first_and_a_call_closed_without_its_end(
        tracer: CallTracer, exporter: InMemorySpanExporter) -> None:
    """A turn with no speech (DTMF), turn.metrics before turn.completed (as speech-to-speech
    emits them), and a call whose tracer is closed by the host without session.ended."""
    at = Clock()
    for e in [
        at(ev.SessionStarted, 0.0, call_uuid="u1"),
        at(ev.UserBackchannel, 0.5, text="mhm"),
        at(ev.UserTurnCompleted, 1.0, turn_id="t1", text="5", trigger="dtmf"),
        at(ev.TurnMetrics, 1.5, turn_id="t1", vad_stop_to_eou_ms=0.0, first_audio_out_ms=500.0,
           preemptive=True),
        at(ev.TurnCompleted, 2.0, turn_id="t1", user_text="5", agent_text="Got it."),
        at(ev.UserTurnCompleted, 3.0, turn_id="t2", text="and?", trigger="vad"),
    ]:
        tracer.on_event(e)
    tracer.close(at.t0 + 4.0)
    tracer.close(at.t0 + 9.0)  # once only
    spans = by_name(exporter)
    (call,) = spans["call"]
    assert call.start_time is not None
    t0 = call.start_time
    assert ms(call, t0) == (0, 4000)
    assert P + "call.end_reason" not in (call.attributes or {})
    first, second = sorted(spans["turn"], key=lambda s: s.start_time or 0)
    assert ms(first, t0) == (1000, 2000)
    assert dict(first.attributes or {})[P + "turn.preemptive"] is True
    assert ms(spans["first_audio"][0], t0) == (1000, 1500)  # from the keypress
    assert ms(second, t0) == (3000, 4000)  # still open when the call ended


def test_telemetry_settings_validate() -> None:
    s = TelemetrySettings()
    assert s.otlp_endpoint is None and not s.enabled
    assert (s.service_name, s.headers, s.sample_ratio) == ("phonebooth", {}, 1.0)
    s = TelemetrySettings(otlp_endpoint="http://collector:4318/")
    assert s.enabled and s.traces_url == "http://collector:4318/v1/traces"
    s = TelemetrySettings(otlp_endpoint="https://otlp.example.com/v1/traces")
    assert s.traces_url == "https://otlp.example.com/v1/traces"
    assert not TelemetrySettings(otlp_endpoint="  ").enabled
    for bad in ({"otlp_endpoint": "collector:4318"}, {"sample_ratio": 1.5},
                {"sample_ratio": -0.1}, {"service_name": ""}, {"timeout_s": 0},
                {"endpoint": "http://x"}):
        with pytest.raises(ConfigError) as exc:
            load_settings(telemetry=bad)
        assert str(exc.value).startswith("config error: telemetry.")


def test_telemetry_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.setenv("PHONEBOOTH__TELEMETRY__OTLP_ENDPOINT", "http://otel:4318")
    monkeypatch.setenv("PHONEBOOTH__TELEMETRY__SAMPLE_RATIO", "0.25")
    monkeypatch.setenv("PHONEBOOTH__TELEMETRY__HEADERS", '{"x-api-key": "s3cret"}')
    s = Settings().telemetry
    assert s.otlp_endpoint == "http://otel:4318" and s.sample_ratio == 0.25
    assert s.headers["x-api-key"].get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)


def _state(**telemetry_settings: Any) -> Any:
    settings = Settings(telemetry=telemetry_settings)
    return SimpleNamespace(settings=settings, tracing="unset")


async def test_tracing_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_exporter(settings: TelemetrySettings) -> SpanExporter:
        raise AssertionError("no exporter is built when tracing is off")
    monkeypatch.setattr(telemetry, "span_exporter", no_exporter)
    assert telemetry.start_tracing(TelemetrySettings()) is None
    state = _state()
    async with tracing_component(SimpleNamespace(version="1"), state):
        assert state.tracing is None
    assert state.tracing is None


async def test_spans_are_posted_to_the_otlp_endpoint() -> None:
    """The real OTLP/HTTP exporter posts protobuf to <endpoint>/v1/traces with the configured
    headers; the component's exit flushes what is still batched."""
    def respond(r: Received) -> tuple[int, dict[str, str], bytes]:
        return 200, {"Content-Type": "application/x-protobuf"}, b""

    with LocalHttpServer(respond) as collector:
        state = _state(otlp_endpoint=collector.url, service_name="pb-test",
                       headers={"x-collector-key": "k-123"})
        async with tracing_component(SimpleNamespace(version="9.9"), state):
            assert state.tracing is not None
            call = CallTracer(state.tracing.tracer)
            call.on_event(ev.SessionStarted(session_id="s-otlp", call_uuid="u-otlp"))
            call.on_event(ev.SessionEnded(session_id="s-otlp", reason="caller_hangup"))
            assert not collector.snapshot()  # batched until the flush
        (req,) = collector.snapshot()
    assert state.tracing is None
    assert (req.method, req.path) == ("POST", "/v1/traces")
    headers = {k.lower(): v for k, v in req.headers.items()}
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["x-collector-key"] == "k-123"
    body = ExportTraceServiceRequest.FromString(req.body)
    (rs,) = body.resource_spans
    resource = {kv.key: kv.value for kv in rs.resource.attributes}
    assert resource["service.name"].string_value == "pb-test"
    assert resource["service.version"].string_value == "9.9"
    spans = [s for ss in rs.scope_spans for s in ss.spans]
    assert [s.name for s in spans] == ["call"]
    attrs = {kv.key: kv.value for kv in spans[0].attributes}
    assert attrs[P + "session_id"].string_value == "s-otlp"
    assert attrs[P + "call.end_reason"].string_value == "caller_hangup"


async def test_sample_ratio_zero_records_no_call(exporter: InMemorySpanExporter,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def make(settings: TelemetrySettings) -> SpanExporter:
        return exporter
    monkeypatch.setattr(telemetry, "span_exporter", make)
    tracing = telemetry.start_tracing(
        TelemetrySettings(otlp_endpoint="http://127.0.0.1:9", sample_ratio=0.0))
    assert tracing is not None
    call = CallTracer(tracing.tracer)
    for e in (ev.SessionStarted(), ev.UserTurnCompleted(turn_id="t"),
              ev.TurnCompleted(turn_id="t"), ev.TurnMetrics(turn_id="t", first_audio_out_ms=1.0),
              ev.SessionEnded()):
        call.on_event(e)
    tracing.shutdown()
    assert exporter.get_finished_spans() == ()
