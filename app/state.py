"""The application state shared by routers, background tasks and lifecycle components.

One `AppState` lives at `app.state.pb` for the lifetime of the process. Optional fields are
filled by the subsystems that own them (call host, event bus, shared models) when their
lifecycle component starts; they stay None in a process that does not run them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from app.config import Settings
from app.db.engine import Database
from app.security.crypto import SecretBox

log = logging.getLogger(__name__)

# A readiness probe: returns True when ready (or an awaitable of it); raising counts as not
# ready and the message is reported. Its __name__ names it in /readyz output.
ReadyCheck = Callable[[], bool | Awaitable[bool]]
# Runs on SIGTERM *before* the HTTP server closes connections (uvicorn closes open WebSockets
# as soon as its own shutdown starts, before the lifespan exits), so live calls can finish.
DrainHook = Callable[[], Awaitable[None]]
# Extra time past limits.drain_timeout_s for hooks to end the remaining calls politely.
DRAIN_GRACE_S = 10.0


@dataclass
class AppState:
    settings: Settings
    db: Database
    crypto: SecretBox
    # Filled later by their owners:
    calls: Any = None  # app.calls host (admission, live sessions, drain)
    events: Any = None  # app.events bus (webhooks, WebSocket fan-out)
    engine_models: Any = None  # shared VAD / turn / local provider models
    tracing: Any = None  # app.telemetry.Tracing when telemetry.otlp_endpoint is set
    recordings: Any = None  # app.calls.recordings.RecordingStore (call recordings)
    ready_checks: list[ReadyCheck] = field(default_factory=list)
    drain_hooks: list[DrainHook] = field(default_factory=list)
    draining: bool = False
    # Anything else a subsystem wants to share, keyed by its module name.
    extras: dict[str, Any] = field(default_factory=dict)

    def add_ready_check(self, check: ReadyCheck) -> None:
        self.ready_checks.append(check)

    def add_drain_hook(self, hook: DrainHook) -> None:
        self.drain_hooks.append(hook)

    async def drain(self) -> None:
        """Stop being ready and run every drain hook (concurrently), bounded by
        `limits.drain_timeout_s` plus a grace period. Safe to call more than once."""
        if self.draining:
            return
        self.draining = True
        if not self.drain_hooks:
            return
        budget = self.settings.limits.drain_timeout_s + DRAIN_GRACE_S
        log.info("draining: waiting up to %.0f s for live calls", budget)
        tasks = [asyncio.ensure_future(h()) for h in self.drain_hooks]
        done, pending = await asyncio.wait(tasks, timeout=budget)
        for t in pending:
            t.cancel()
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                log.error("drain hook failed: %s", t.exception())
        if pending:
            log.warning("drain: %d hook(s) still running after %.0f s; cancelled",
                        len(pending), budget)

    async def run_ready_checks(self) -> dict[str, str]:
        """name -> "ok" | reason; the service is ready when every value is "ok"."""
        results: dict[str, str] = {}
        for check in self.ready_checks:
            name = getattr(check, "__name__", None) or type(check).__name__
            try:
                ok = check()
                if inspect.isawaitable(ok):
                    ok = await ok
                results[name] = "ok" if ok else "not ready"
            except Exception as exc:
                results[name] = f"error: {exc}"
        return results


def get_state(app: Any) -> AppState:
    """`app.state.pb` from a FastAPI/Starlette app (or anything with `.state`)."""
    return app.state.pb


def app_state(request: Request) -> AppState:
    """FastAPI dependency: the state of the app serving `request`."""
    return get_state(request.app)


# A route parameter annotated `State` receives the AppState (REST routes and carrier callbacks).
State = Annotated[AppState, Depends(app_state)]
