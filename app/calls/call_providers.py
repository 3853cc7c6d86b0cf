"""The providers one call builds (STT, LLM, TTS, speech-to-speech), as a part of the call.

Each is built with the call's context: its usage becomes `session.usage` events and a switch to
a fallback a `provider.fallback` event. The call keeps every provider it built, including
those a live update replaced or a call whose setup failed part way got to, and closes them all
when it ends: some hold a socket per call (e.g. Cartesia's WebSocket).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from pipelines import events as ev
from providers.base import Kind, ProviderContext, SecretRef, Usage
from providers.factory import build_provider

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 2.0


@runtime_checkable
class Closable(Protocol):
    async def aclose(self) -> None: ...


class CallProviders:
    def __init__(self, session_id: str, emit: ev.EventCallback, *,
                 resolve_secret: Callable[[SecretRef], Awaitable[str]], models_dir: str,
                 shared: Any) -> None:
        self._session_id = session_id
        self._emit = emit
        self._resolve_secret = resolve_secret
        self._models_dir = models_dir
        self._shared = shared
        # Everything built so far, in order; open_s2s adds its provider here too.
        self.held: list[Any] = []

    def context(self, kind: str) -> ProviderContext:
        def on_usage(u: Usage) -> None:
            self._emit(ev.SessionUsage(provider=u.provider, model=u.model, kind=kind,
                                       metric=u.metric, quantity=u.quantity))

        return ProviderContext(resolve_secret=self._resolve_secret, models_dir=self._models_dir,
                               on_usage=on_usage, shared=self._shared)

    def build(self, kind: Kind, block: Any) -> Any:
        """The provider (with its fallbacks) for an agent's `kind` block."""
        def switched(kind_: str, from_name: str, to_name: str, error: Any) -> None:
            self._emit(ev.ProviderFallback(kind=kind_ or kind, from_provider=from_name,
                                           to_provider=to_name, error=str(error)[:300]))

        provider = build_provider(kind, block, self.context(kind), on_switch=switched)
        self.held.append(provider)
        return provider

    async def aclose(self) -> None:
        for provider in self.held:
            if not isinstance(provider, Closable):
                continue
            try:
                await asyncio.wait_for(provider.aclose(), CLOSE_TIMEOUT_S)
            except Exception as exc:
                log.warning("session %s: closing %s failed: %r", self._session_id,
                            getattr(provider, "name", type(provider).__name__), exc)
