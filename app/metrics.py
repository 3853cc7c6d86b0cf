"""Prometheus metrics: what an operator needs to see whether calls run in real time.

Metrics are fed from the typed event stream (`observe_event`), from the playout writers and the
inference executors (pulled at scrape time by `EngineCollector`), and from an event-loop lag
probe. One registry per process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from pipelines import events as ev

REGISTRY = CollectorRegistry(auto_describe=True)

_LAT_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)

ACTIVE_CALLS = Gauge("phonebooth_active_calls", "Calls currently hosted by this process",
                     registry=REGISTRY)
CALLS_TOTAL = Counter("phonebooth_calls_total", "Calls ended, by end reason", ["reason"],
                      registry=REGISTRY)
CALLS_REJECTED = Counter("phonebooth_calls_rejected_total", "Calls refused at the answer URL",
                         ["reason"], registry=REGISTRY)
TURN_LATENCY = Histogram(
    "phonebooth_turn_latency_seconds",
    "Per-turn latency by stage (vad_stop_to_eou, eou_to_stt_final, llm_ttft, tts_ttfb, "
    "first_audio_out, played_ack, server_added)",
    ["stage"], buckets=_LAT_BUCKETS, registry=REGISTRY,
)
BARGE_IN_LATENCY = Histogram(
    "phonebooth_barge_in_latency_seconds",
    "Caller speech onset to the agent's audio being cleared", buckets=_LAT_BUCKETS,
    registry=REGISTRY,
)
FALSE_INTERRUPTIONS = Counter("phonebooth_false_interruptions_total",
                              "Caller noises that paused the agent but did not interrupt it",
                              registry=REGISTRY)
PROVIDER_ERRORS = Counter("phonebooth_provider_errors_total", "Provider errors by stage",
                          ["stage"], registry=REGISTRY)
PROVIDER_FALLBACKS = Counter("phonebooth_provider_fallbacks_total",
                             "Switches to a fallback provider", ["kind", "from_provider",
                                                                  "to_provider"],
                             registry=REGISTRY)
EVENT_LOOP_LAG = Histogram(
    "phonebooth_event_loop_lag_seconds", "Scheduling delay of a periodic probe on the event loop",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0), registry=REGISTRY,
)
PLAYOUT_UNDERRUNS = Counter("phonebooth_playout_underruns_total",
                            "Agent audio frames that reached Plivo late (an audible hole)",
                            registry=REGISTRY)
INBOUND_FRAMES_DROPPED = Counter("phonebooth_inbound_frames_dropped_total",
                                 "Caller audio frames dropped because a call fell behind",
                                 registry=REGISTRY)
_STAGES = {
    "vad_stop_to_eou_ms": "vad_stop_to_eou",
    "eou_to_stt_final_ms": "eou_to_stt_final",
    "llm_ttft_ms": "llm_ttft",
    "tts_ttfb_ms": "tts_ttfb",
    "first_audio_out_ms": "first_audio_out",
    "played_ack_ms": "played_ack",
    "server_added_ms": "server_added",
}


def observe_event(event: ev.Event) -> None:
    """Update metrics from one engine/session event. Cheap; called for every event."""
    if isinstance(event, ev.TurnMetrics):
        for attr, stage in _STAGES.items():
            value = getattr(event, attr)
            if value is not None:
                TURN_LATENCY.labels(stage).observe(value / 1000.0)
    elif isinstance(event, ev.AgentSpeechInterrupted):
        BARGE_IN_LATENCY.observe(event.barge_in_ms / 1000.0)
    elif isinstance(event, ev.AgentFalseInterruption):
        FALSE_INTERRUPTIONS.inc()
    elif isinstance(event, ev.SessionError):
        PROVIDER_ERRORS.labels(event.stage or "unknown").inc()
    elif isinstance(event, ev.ProviderFallback):
        PROVIDER_FALLBACKS.labels(event.kind, event.from_provider, event.to_provider).inc()
    elif isinstance(event, ev.SessionEnded):
        CALLS_TOTAL.labels(event.reason or "unknown").inc()


class EngineCollector(Collector):
    """Pulls numbers owned by other components at scrape time (no hot-path work).

    Each source returns ready metric families (see `gauge`, `histogram`).
    """

    def __init__(self) -> None:
        self._sources: dict[str, Callable[[], Iterable[Metric]]] = {}

    def set(self, name: str, source: Callable[[], Iterable[Metric]]) -> None:
        """Install (or replace: a new app instance supersedes the old one) a named source."""
        self._sources[name] = source

    def collect(self) -> Iterable[Metric]:
        for source in list(self._sources.values()):
            try:
                yield from list(source())
            except Exception:  # a broken source must not break the scrape
                continue


def counter(name: str, help_text: str, value: float) -> Metric:
    """A counter family; `name` may end in `_total` (the exposition adds it either way)."""
    return CounterMetricFamily(f"phonebooth_{name.removesuffix('_total')}", help_text, value=value)


def gauge(name: str, help_text: str, value: float) -> Metric:
    return GaugeMetricFamily(f"phonebooth_{name}", help_text, value=value)


def histogram(name: str, help_text: str, cumulative: list[tuple[float, int]], total: float,
              labels: dict[str, str]) -> Metric:
    """A histogram family from (upper bound, cumulative count) pairs ending with +Inf."""
    fam = HistogramMetricFamily(f"phonebooth_{name}", help_text, labels=list(labels))
    buckets = [("+Inf" if b == float("inf") else repr(float(b)), n) for b, n in cumulative]
    fam.add_metric(list(labels.values()), buckets, total)
    return fam


ENGINE = EngineCollector()
REGISTRY.register(ENGINE)


async def monitor_event_loop_lag(interval_s: float = 0.25) -> None:
    """Measure how late a periodic sleep wakes up: the event loop's scheduling delay."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval_s)
        EVENT_LOOP_LAG.observe(max(0.0, loop.time() - start - interval_s))


def render() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
