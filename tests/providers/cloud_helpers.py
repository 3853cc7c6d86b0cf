"""What the cloud adapter tests share: the per-module fake vendor and its per-test reset, building
an adapter pointed at the fake, the barge-in (cancellation) check, the connection-reuse check and
the key-leak check."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, TypeVar

import pytest

from providers.base import ProviderContext
from tests.fakes.harness import KEY_REF
from tests.fakes.vendor_base import FAKE_API_KEY, FakeVendor, Recorded

# Cancelling must reach the vendor within this budget (issue 6).
CANCEL_BUDGET_S = 0.1

V = TypeVar("V", bound=FakeVendor)


def vendor_fixtures(factory: Callable[[], V], **knobs: Any) -> tuple[Any, Any]:
    """The `server` fixture (one fake for the whole module: starting one costs a thread and a
    socket) and the `fake` fixture (that server cleared, with no added latency and `knobs` set,
    for each test). Use as `server, fake = vendor_fixtures(FakeX, knob=value)`."""

    @pytest.fixture(scope="module", name="server")
    def server_fixture() -> Iterator[V]:
        with factory() as fake:
            yield fake

    @pytest.fixture(name="fake")
    def fake_fixture(server: V) -> Iterator[V]:
        server.reset()
        server.first_byte_delay_s = server.chunk_delay_s = 0.0
        for name, value in knobs.items():
            setattr(server, name, value)
        yield server
        server.reset()

    return server_fixture, fake_fixture


A = TypeVar("A")


def adapter(cls: type[A], base_url: str, ctx: ProviderContext, **opts: Any) -> A:
    """A cloud adapter `cls` talking to a fake at `base_url` with the fake's key reference."""
    cfg = {"base_url": base_url, "api_key": KEY_REF, **opts}
    config = cls.Config.model_validate(cfg)  # type: ignore[attr-defined]
    return cls(config, ctx)  # type: ignore[call-arg]


async def answers_share_a_connection(fake: FakeVendor, model: Any,
                                     queue: Callable[[str], None]) -> None:
    """Two answers in a row from `model` (an LLM adapter) reach the vendor on one connection:
    the first stream was read to its end, so the pooled connection served the second."""
    for question in ("Hours?", "And on Sunday?"):
        queue("Nine to five.")
        async for _ in model.stream([{"role": "user", "content": question}]):
            pass
    first, second = fake.requests[-2:]
    assert first.client is not None and second.client == first.client


async def cancel_promptly(fake: FakeVendor,
                          target: AsyncGenerator[Any, None] | asyncio.Task[Any]) -> Recorded:
    """Barge in on `target` (close the generator, or cancel the task consuming it) and check the
    vendor saw the client go away within the budget. Returns that (last) request."""
    t0 = time.monotonic()
    if isinstance(target, asyncio.Task):
        target.cancel()
        with pytest.raises(asyncio.CancelledError):
            await target
    else:
        await target.aclose()
    rec = fake.requests[-1]
    await fake.until(lambda: rec.closed_at is not None)
    assert rec.closed_at is not None and rec.closed_at - t0 < CANCEL_BUDGET_S
    return rec


def assert_key_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Something was logged (the libraries at DEBUG), and none of it holds the API key."""
    assert caplog.records
    assert FAKE_API_KEY not in caplog.text
    for r in caplog.records:
        assert FAKE_API_KEY not in r.getMessage()
