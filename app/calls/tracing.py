"""A trace per call, built from the call's typed events (docs/tracing.md).

The engine knows nothing of OpenTelemetry: `CallTracer` sees every event the call emits
(`Call.emit`) and draws the spans from them, with the events' own clock (`mono`), so a span's
times are when things happened, not when the event was handled:

    call                      session.started -> session.ended
      turn                    the caller's first speech of the turn -> turn.completed
        end_of_turn           end of the caller's speech -> end of turn detected
        stt                   end of the caller's speech -> final transcript
        llm                   LLM request -> first token (time to first token)
        tts                   TTS request -> first audio byte (time to first byte)
        first_audio           end of the caller's speech -> first agent audio sent
        tool                  tool.called -> tool.completed / tool.failed
      tool                    (a tool called outside a caller's turn)

Stage spans come from `turn.metrics` (durations and stage times measured from the end of the
caller's speech). Attributes carry ids, names, lengths and latencies, never what was said.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from app.logging_setup import register_secret
from app.state import AppState
from app.telemetry import start_tracing
from pipelines import events as ev

log = logging.getLogger(__name__)

PREFIX = "phonebooth."
# turn.metrics fields recorded on the turn span (ms; absent when the stage did not happen).
TURN_METRICS = ("vad_stop_to_eou_ms", "eou_to_stt_final_ms", "llm_ttft_ms", "tts_ttfb_ms",
                "first_audio_out_ms", "played_ack_ms", "server_added_ms")
MAX_MESSAGE = 300


@dataclass
class _Turn:
    span: Span
    turn_id: str
    start: float  # mono
    committed_at: float  # mono of user.turn_completed
    speech_end: float | None  # mono of the caller's last speech stop before the commit
    completed_at: float | None = None  # mono of turn.completed
    measured: bool = False  # turn.metrics applied
    tools: list[str] = field(default_factory=list)


class CallTracer:
    """Spans of one call. `on_event` never raises: tracing must not disturb a call."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer
        # Events carry the monotonic clock; spans want wall-clock nanoseconds.
        self._offset = time.time() - time.monotonic()
        self._call: Span | None = None
        self._ended = False
        self._turns: dict[str, _Turn] = {}
        self._current: _Turn | None = None  # committed, turn.completed not seen yet
        self._tools: dict[str, Span] = {}
        self._turn_start: float | None = None  # the caller's first speech since the last turn
        self._speech_end: float | None = None

    def _ns(self, mono: float) -> int:
        return int((mono + self._offset) * 1e9)

    # -- events ----------------------------------------------------------------------------
    def on_event(self, event: ev.Event) -> None:
        if self._ended:
            return
        handler = _HANDLERS.get(type(event))
        if handler is None:
            return
        try:
            handler(self, event)
        except Exception:
            log.warning("session %s: tracing %s failed", event.session_id, event.type,
                        exc_info=True)

    def _session_started(self, e: ev.SessionStarted) -> None:
        if self._call is not None:
            return
        self._call = self._tracer.start_span(
            "call", kind=SpanKind.SERVER, start_time=self._ns(e.mono), attributes={
                PREFIX + "session_id": e.session_id,
                PREFIX + "call_uuid": e.call_uuid,
                PREFIX + "agent.id": e.agent_id,
                PREFIX + "agent.version": e.agent_version,
                PREFIX + "call.direction": e.direction,
            })

    def _context(self, span: Span | None) -> Any:
        return trace.set_span_in_context(span) if span is not None else None

    def _speech_started(self, e: ev.UserSpeechStarted) -> None:
        if self._turn_start is None:
            self._turn_start = e.mono

    def _speech_stopped(self, e: ev.UserSpeechStopped) -> None:
        self._speech_end = e.mono

    def _not_a_turn(self, e: ev.Event) -> None:
        """A backchannel or a false interruption: that speech starts no turn."""
        self._turn_start = None

    def _user_turn(self, e: ev.UserTurnCompleted) -> None:
        if self._call is None:
            return
        if self._current is not None:
            self._end_turn(self._current, e.mono)
        start = self._turn_start if self._turn_start is not None else (
            self._speech_end if self._speech_end is not None else e.mono)
        start = min(start, e.mono)
        attrs: dict[str, Any] = {
            PREFIX + "turn.id": e.turn_id,
            PREFIX + "turn.trigger": e.trigger,
            PREFIX + "turn.user_text_length": len(e.text),
        }
        if e.eou_probability is not None:
            attrs[PREFIX + "turn.eou_probability"] = e.eou_probability
        span = self._tracer.start_span("turn", context=self._context(self._call),
                                       start_time=self._ns(start), attributes=attrs)
        turn = _Turn(span, e.turn_id, start, e.mono, self._speech_end)
        self._turns[e.turn_id] = self._current = turn
        self._turn_start = self._speech_end = None

    def _turn_completed(self, e: ev.TurnCompleted) -> None:
        turn = self._turns.get(e.turn_id)
        if turn is None:
            return
        turn.span.set_attributes({
            PREFIX + "turn.agent_text_length": len(e.agent_text),
            PREFIX + "turn.heard_text_length": len(e.heard_text),
            PREFIX + "turn.interrupted": e.interrupted,
        })
        turn.completed_at = e.mono
        if self._current is turn:
            self._current = None
        if turn.measured:
            self._end_turn(turn, e.mono)

    def _turn_metrics(self, e: ev.TurnMetrics) -> None:
        turn = self._turns.get(e.turn_id)
        if turn is None or turn.measured:
            return
        turn.measured = True
        attrs: dict[str, Any] = {PREFIX + "turn.preemptive": e.preemptive}
        for name in TURN_METRICS:
            value = getattr(e, name)
            if value is not None:
                attrs[f"{PREFIX}turn.{name}"] = value
        turn.span.set_attributes(attrs)
        # The end of the caller's speech, which every stage time is measured from: the last
        # speech stop before the commit, else (a keypress) the commit less the longest wait.
        base = turn.speech_end
        if base is None:
            waits = [v for v in (e.vad_stop_to_eou_ms, e.stt_final_at_ms) if v is not None]
            base = turn.committed_at - max([0.0, *waits]) / 1000.0
        self._stage(turn, "end_of_turn", base, 0.0, e.vad_stop_to_eou_ms,
                    {"vad_stop_to_eou_ms": e.vad_stop_to_eou_ms})
        self._stage(turn, "stt", base, 0.0, e.stt_final_at_ms,
                    {"eou_to_stt_final_ms": e.eou_to_stt_final_ms})
        self._stage(turn, "llm", base, e.llm_request_at_ms, e.llm_first_token_at_ms,
                    {"ttft_ms": e.llm_ttft_ms})
        self._stage(turn, "tts", base, e.tts_request_at_ms, e.tts_first_byte_at_ms,
                    {"ttfb_ms": e.tts_ttfb_ms})
        self._stage(turn, "first_audio", base, 0.0, e.first_audio_out_ms,
                    {"first_audio_out_ms": e.first_audio_out_ms,
                     "played_ack_ms": e.played_ack_ms, "server_added_ms": e.server_added_ms})
        if turn.completed_at is not None:
            self._end_turn(turn, turn.completed_at)

    def _stage(self, turn: _Turn, name: str, base: float, start_ms: float | None,
               end_ms: float | None, measures: dict[str, float | None]) -> None:
        if start_ms is None or end_ms is None:
            return
        start = base + start_ms / 1000.0
        end = max(start, base + end_ms / 1000.0)
        attrs = {f"{PREFIX}{name}.{k}": v for k, v in measures.items() if v is not None}
        span = self._tracer.start_span(name, context=self._context(turn.span),
                                       start_time=self._ns(start), attributes=attrs)
        span.end(end_time=self._ns(end))

    def _end_turn(self, turn: _Turn, at: float) -> None:
        if self._turns.pop(turn.turn_id, None) is None:
            return
        if self._current is turn:
            self._current = None
        turn.span.end(end_time=self._ns(max(at, turn.start)))

    def _tool_called(self, e: ev.ToolCalled) -> None:
        if self._call is None or e.call_id in self._tools:
            return
        parent = self._current.span if self._current is not None else self._call
        self._tools[e.call_id] = self._tracer.start_span(
            "tool", context=self._context(parent), start_time=self._ns(e.mono), attributes={
                PREFIX + "tool.name": e.name,
                PREFIX + "tool.call_id": e.call_id,
            })

    def _tool_completed(self, e: ev.ToolCompleted) -> None:
        span = self._tools.pop(e.call_id, None)
        if span is None:
            return
        span.set_attributes({PREFIX + "tool.status": "ok",
                             PREFIX + "tool.latency_ms": e.latency_ms})
        span.set_status(Status(StatusCode.OK))
        span.end(end_time=self._ns(e.mono))

    def _tool_failed(self, e: ev.ToolFailed) -> None:
        span = self._tools.pop(e.call_id, None)
        if span is None:
            return
        span.set_attributes({PREFIX + "tool.status": e.status,
                             PREFIX + "tool.latency_ms": e.latency_ms})
        if e.status != "cancelled":  # cut off by the caller's barge-in: not an error
            span.set_status(Status(StatusCode.ERROR, e.status))
        span.end(end_time=self._ns(e.mono))

    def _innermost(self) -> Span | None:
        return self._current.span if self._current is not None else self._call

    def _session_error(self, e: ev.SessionError) -> None:
        attrs = {PREFIX + "error.code": e.code, PREFIX + "error.stage": e.stage,
                 PREFIX + "error.message": e.message[:MAX_MESSAGE]}
        for span in {id(s): s for s in (self._innermost(), self._call) if s is not None}.values():
            span.add_event("session.error", attributes=attrs, timestamp=self._ns(e.mono))
            span.set_status(Status(StatusCode.ERROR, e.code or e.stage))

    def _fallback(self, e: ev.ProviderFallback) -> None:
        span = self._innermost()
        if span is not None:
            span.add_event("provider.fallback", timestamp=self._ns(e.mono), attributes={
                PREFIX + "provider.kind": e.kind, PREFIX + "provider.from": e.from_provider,
                PREFIX + "provider.to": e.to_provider})

    def _session_ended(self, e: ev.SessionEnded) -> None:
        self.close(e.mono, reason=e.reason, duration_s=e.duration_s)

    def close(self, at: float | None = None, *, reason: str = "",
              duration_s: float | None = None) -> None:
        """End every span still open (the call is over); later events are ignored."""
        if self._ended:
            return
        self._ended = True
        at = time.monotonic() if at is None else at
        for span in self._tools.values():
            span.set_attribute(PREFIX + "tool.status", "unfinished")
            span.end(end_time=self._ns(at))
        self._tools.clear()
        for turn in list(self._turns.values()):
            self._end_turn(turn, turn.completed_at if turn.completed_at is not None else at)
        if self._call is not None:
            if reason:
                self._call.set_attribute(PREFIX + "call.end_reason", reason)
            if duration_s is not None:
                self._call.set_attribute(PREFIX + "call.duration_s", duration_s)
            self._call.end(end_time=self._ns(at))


_HANDLERS: dict[type[ev.Event], Any] = {
    ev.SessionStarted: CallTracer._session_started,
    ev.UserSpeechStarted: CallTracer._speech_started,
    ev.UserSpeechStopped: CallTracer._speech_stopped,
    ev.UserBackchannel: CallTracer._not_a_turn,
    ev.AgentFalseInterruption: CallTracer._not_a_turn,
    ev.UserTurnCompleted: CallTracer._user_turn,
    ev.TurnCompleted: CallTracer._turn_completed,
    ev.TurnMetrics: CallTracer._turn_metrics,
    ev.ToolCalled: CallTracer._tool_called,
    ev.ToolCompleted: CallTracer._tool_completed,
    ev.ToolFailed: CallTracer._tool_failed,
    ev.SessionError: CallTracer._session_error,
    ev.ProviderFallback: CallTracer._fallback,
    ev.SessionEnded: CallTracer._session_ended,
}


@contextlib.asynccontextmanager
async def tracing_component(app: Any, state: AppState) -> AsyncIterator[None]:
    """Lifecycle component (app.main.COMPONENTS): the process's tracer provider, built once at
    start when `telemetry.otlp_endpoint` is set, flushed and shut down at exit (after the call
    host has ended its calls, so their spans are exported)."""
    settings = state.settings.telemetry
    for value in settings.headers.values():
        register_secret(value.get_secret_value())
    tracing = start_tracing(settings, version=str(getattr(app, "version", "") or ""),
                            instance=state.settings.server.node_id or socket.gethostname())
    state.tracing = tracing
    if tracing is not None:
        log.info("tracing calls to %s (sample ratio %s)", settings.traces_url,
                 settings.sample_ratio)
    try:
        yield
    finally:
        state.tracing = None
        if tracing is not None:
            try:
                await asyncio.to_thread(tracing.shutdown)
            except Exception as exc:
                log.warning("tracing shutdown failed: %s", exc)
