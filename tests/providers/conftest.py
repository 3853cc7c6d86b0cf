"""Fixtures for provider tests: a ProviderContext that records what adapters report (`ctx` for
the local providers, `cx` for the cloud ones)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from providers.base import ProviderContext, SecretRef, Usage
from tests.fakes.harness import Collected, context


@dataclass
class Recorder:
    usage: list[Usage] = field(default_factory=list)
    metrics: list[tuple[str, str, float]] = field(default_factory=list)

    def on_metric(self, provider: str, metric: str, value: float) -> None:
        self.metrics.append((provider, metric, value))

    def quantity(self, metric: str) -> float:
        return sum(u.quantity for u in self.usage if u.metric == metric)

    def metric_values(self, metric: str) -> list[float]:
        return [v for _, m, v in self.metrics if m == metric]


async def _no_secrets(ref: SecretRef) -> str:
    raise AssertionError(f"local providers need no credentials (asked for {ref})")


@pytest.fixture(scope="session")
def shared() -> dict[str, Any]:
    """Process-wide adapter state (loaded models), shared across tests like in the server."""
    return {}


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def make_ctx(models_dir: Path | str, shared: dict[str, Any], recorder: Recorder) -> ProviderContext:
    return ProviderContext(resolve_secret=_no_secrets, models_dir=str(models_dir),
                           on_usage=recorder.usage.append, on_metric=recorder.on_metric,
                           shared=shared)


@pytest.fixture
def ctx(tmp_path: Path, shared: dict[str, Any], recorder: Recorder) -> ProviderContext:
    return make_ctx(tmp_path, shared, recorder)


@pytest.fixture
async def cx() -> AsyncIterator[tuple[ProviderContext, Collected]]:
    """Cloud adapters' context: the fake vendor key resolves, usage and metrics are collected,
    and the shared HTTP clients are closed after the test."""
    async with context() as pair:
        yield pair
