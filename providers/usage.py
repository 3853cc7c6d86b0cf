"""Usage and latency reporting for adapters.

Adapters report through their `ProviderContext`: metered quantities via `on_usage` and latencies
via `on_metric`. The host's callbacks write to the store and metrics; a faulty sink must never
break a call, so every report here is guarded. Call these on the event loop thread (the host's
sinks are not thread-safe); worker threads hand results back to the loop first.

LLM adapters additionally yield `Usage` events from `stream()` (that is their contract); they do
not also call `on_usage`, so a host that records both never double counts.
"""

from __future__ import annotations

import logging
import time

from providers.base import ProviderContext, Usage

log = logging.getLogger(__name__)

TTFB_METRIC = "ttfb_ms"


def report_usage(ctx: ProviderContext, provider: str, model: str, metric: str,
                 quantity: float) -> None:
    """Hand one metered quantity to the host; zero and negative quantities are not reported."""
    if quantity <= 0:
        return
    try:
        ctx.on_usage(Usage(provider=provider, model=model, metric=metric, quantity=quantity))
    except Exception:
        log.exception("usage sink failed for %s %s", provider, metric)


def report_metric(ctx: ProviderContext, provider: str, metric: str, value_ms: float) -> None:
    try:
        ctx.on_metric(provider, metric, value_ms)
    except Exception:
        log.exception("metric sink failed for %s %s", provider, metric)


class FirstResultClock:
    """Time from a request to its first result, reported once as `ttfb_ms`.

    Start it when the request is issued; `mark()` on every result is cheap and reports only the
    first. `restart()` re-arms it for the next request on the same object.
    """

    __slots__ = ("_ctx", "_done", "_metric", "_provider", "_t0")

    def __init__(self, ctx: ProviderContext, provider: str, metric: str = TTFB_METRIC) -> None:
        self._ctx = ctx
        self._provider = provider
        self._metric = metric
        self._t0 = time.perf_counter()
        self._done = False

    def restart(self) -> None:
        self._t0 = time.perf_counter()
        self._done = False

    @property
    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self._t0) * 1000.0

    def mark(self) -> float | None:
        """Report the latency if this is the first result; return it (None if already done)."""
        if self._done:
            return None
        self._done = True
        ms = self.elapsed_ms
        report_metric(self._ctx, self._provider, self._metric, ms)
        return ms
