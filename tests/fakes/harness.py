"""A `ProviderContext` for tests of the cloud adapters: resolves `{env: NAME}` / `{credential:
NAME}` references from a dict (never the real environment) and collects usage and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from providers.base import ProviderContext, SecretRef, Usage
from providers.http import aclose_shared
from tests.fakes.vendor_base import FAKE_API_KEY

KEY_REF = {"env": "FAKE_VENDOR_KEY"}


@dataclass
class Collected:
    usage: list[Usage] = field(default_factory=list)
    metrics: list[tuple[str, str, float]] = field(default_factory=list)

    def total(self, metric: str) -> float:
        return sum(u.quantity for u in self.usage if u.metric == metric)

    def ttfb(self, provider: str) -> list[float]:
        return [v for p, m, v in self.metrics if p == provider and m == "ttfb_ms"]


def make_context(secrets: dict[str, str] | None = None) -> tuple[ProviderContext, Collected]:
    secrets = {"FAKE_VENDOR_KEY": FAKE_API_KEY} if secrets is None else secrets
    got = Collected()

    async def resolve(ref: SecretRef) -> str:
        name = ref.env or ref.credential or ""
        if name not in secrets:
            raise KeyError(f"no secret {name}")
        return secrets[name]

    ctx = ProviderContext(
        resolve_secret=resolve,
        models_dir="/nonexistent",
        on_usage=got.usage.append,
        on_metric=lambda p, m, v: got.metrics.append((p, m, v)),
    )
    return ctx, got


@contextlib.asynccontextmanager
async def context(secrets: dict[str, str] | None = None
                  ) -> AsyncIterator[tuple[ProviderContext, Collected]]:
    ctx, got = make_context(secrets)
    try:
        yield ctx, got
    finally:
        await aclose_shared(ctx.shared)


async def collect(agen: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in agen]


@contextlib.contextmanager
def all_logs_at_debug(caplog: Any) -> Iterator[None]:
    """Capture everything, the HTTP/WebSocket libraries' own debug output included."""
    names = ["", "httpx", "httpcore", "websockets", "websockets.client", "providers"]
    with contextlib.ExitStack() as stack:
        for n in names:
            stack.enter_context(caplog.at_level(logging.DEBUG, logger=n))
        yield


async def wait_until(predicate: Any, within_s: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within_s}s")
        await asyncio.sleep(0.005)
