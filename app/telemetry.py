"""OpenTelemetry tracing: the process's tracer provider, built from `telemetry` settings.

One provider per process (each `serve --workers N` worker builds its own at start-up): spans are
batched in the background and posted over OTLP/HTTP (protobuf) to `telemetry.otlp_endpoint`.
The provider is not installed as OpenTelemetry's global one (a process may run several apps,
e.g. tests); the call host is handed its tracer instead. `app/calls/tracing.py` turns each
call's events into spans (docs/tracing.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Tracer

from app.config import TelemetrySettings

INSTRUMENTATION = "phonebooth.calls"


def span_exporter(settings: TelemetrySettings) -> SpanExporter:
    """The OTLP/HTTP exporter for `settings` (tests replace this to keep spans in memory)."""
    return OTLPSpanExporter(
        endpoint=settings.traces_url,
        headers={k: v.get_secret_value() for k, v in settings.headers.items()},
        timeout=settings.timeout_s,
    )


@dataclass
class Tracing:
    provider: TracerProvider
    tracer: Tracer

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        return self.provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Export what is still queued, then stop (blocks; run it off the event loop)."""
        self.provider.shutdown()


def start_tracing(settings: TelemetrySettings, *, version: str = "",
                  instance: str = "") -> Tracing | None:
    """The process's tracing, or None when `telemetry.otlp_endpoint` is not set."""
    if not settings.enabled:
        return None
    attributes: dict[str, str | int] = {
        "service.name": settings.service_name,
        "service.instance.id": f"{instance or 'phonebooth'}:{os.getpid()}",
        "process.pid": os.getpid(),
    }
    if version:
        attributes["service.version"] = version
    provider = TracerProvider(
        resource=Resource.create(attributes),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(span_exporter(settings)))
    return Tracing(provider, provider.get_tracer(INSTRUMENTATION, version or None))
