"""The call host: runs one agent conversation per Plivo stream.

`CallHost.run(info, transport)` is the edge's `CallRunner`. It loads and validates the call's
agent, registers the call for the control API, and runs it (`app/calls/call.py`); it holds what
every call of the process shares: the engine models, loaded local models and pooled clients,
pre-rendered failure clips, MCP listings and recordings on their way to storage.
"""

from __future__ import annotations

import asyncio
from typing import Any

from app import metrics
from app.agent_config import AgentConfig
from app.calls.call import Call
from app.calls.clips import ClipCache
from app.calls.recordings import RecordingStore
from app.calls.registry import LiveCalls
from app.calls.runner import CallInfo
from app.calls.secrets import SecretResolver
from app.calls.transport import CallTransport
from app.db.repos import agents as agents_repo
from app.events.signing import signing_secret_from_box
from app.state import AppState
from app.tools.mcp_tools import McpListingCache
from pipelines import events as ev
from pipelines.engine_models import EngineModels


class CallHost:
    """Process-wide: shared models and provider state; one `run` per call."""

    def __init__(self, state: AppState, models: EngineModels) -> None:
        self.state = state
        self.models = models
        self.live = LiveCalls()
        self.secrets = SecretResolver(state.db, state.crypto)
        # Loaded local models and pooled HTTP clients, shared by every call's adapters.
        self.shared: dict[str, Any] = {}
        # Lines pre-rendered by each agent's TTS for when that TTS is down (app/calls/clips.py).
        self.clips = ClipCache()
        # The tools each agent version's MCP servers list, for later calls of that version.
        self.mcp_listings = McpListingCache()
        self.signing_secret = signing_secret_from_box(state.crypto)
        # Finished calls' recordings on their way to storage (awaited at shutdown).
        self.storing: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> int:
        return len(self.live)

    @property
    def recordings(self) -> RecordingStore:
        store = self.state.recordings
        if store is None:  # a host built without the lifecycle component (tests, tools)
            store = self.state.recordings = RecordingStore(self.state.settings.recordings)
        assert isinstance(store, RecordingStore)
        return store

    async def wait_stored(self, timeout_s: float = 30.0) -> None:
        """Let recordings being stored finish (at shutdown)."""
        if self.storing:
            await asyncio.wait(set(self.storing), timeout=timeout_s)

    async def run(self, info: CallInfo, transport: CallTransport) -> str:
        call = Call(self, info, await self._agent_config(info), transport)
        self.live.register(info.session_id, call)
        metrics.ACTIVE_CALLS.inc()
        try:
            return await call.run()
        finally:
            metrics.ACTIVE_CALLS.dec()
            self.live.unregister(info.session_id, call)
            if call.tracer is not None:
                call.tracer.close()  # after session.ended this does nothing

    async def _agent_config(self, info: CallInfo) -> AgentConfig:
        """The call's agent, validated here once: the config the answer URL handed over in this
        process, else the session's agent version read from the database."""
        raw = info.agent_config
        if raw is None:
            raw = {}
            if info.agent_id and info.agent_version:
                async with self.state.db.session() as s:
                    v = await agents_repo.get_version(s, info.agent_id, info.agent_version)
                raw = dict(v.config) if v is not None else {}
        if self.state.events is not None:
            # Events of a call whose agent has no webhook need not wait for a lookup.
            self.state.events.targets.register(info.session_id, raw.get("webhook_url") or None,
                                               raw.get("webhook_events") or ())
        return AgentConfig.model_validate(raw)

    def publish(self, event: ev.Event) -> None:
        metrics.observe_event(event)
        if self.state.events is not None:
            self.state.events.publish(event)
