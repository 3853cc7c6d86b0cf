"""A conversation runner for cluster tests: hosts calls the control API can reach.

Installed as `state.calls` on each test server (it is its own live-call lookup). A call
publishes `session.started`, then waits for the caller to hang up or for control: `say` plays
a short tone the caller hears (and publishes agent.speech_started/completed with the text),
`hangup` ends the call through the carrier's REST API like the real host does. No models: the
tests are about where a call lives, not about the conversation.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from app.calls.registry import LiveCalls
from app.calls.runner import CallInfo
from app.calls.transport import CallTransport
from app.tools.control import NotOnThisCall, TransferPlan
from pipelines import events as ev
from pipelines.audio.frames import SAMPLE_RATE
from pipelines.outcomes import ConsultProgress

TONE = (np.sin(np.arange(SAMPLE_RATE // 4) * 2 * np.pi * 440 / SAMPLE_RATE) * 8000)
TONE = TONE.astype(np.int16)


class _Call:
    def __init__(self, runner: ClusterRunner, info: CallInfo, transport: CallTransport) -> None:
        self.runner = runner
        self.session_id = info.session_id
        self.call_uuid = info.call_uuid
        self.transport = transport
        self.state: dict[str, Any] = {}
        self.said: list[str] = []
        self.injected: list[str] = []
        self.updates: list[dict[str, Any]] = []
        self.played: list[bytes] = []
        self.background: tuple[str, float, bool] | None = None
        self.consults: list[tuple[str, ConsultProgress, str]] = []
        self._ended = False
        self._n = 0

    @property
    def ended(self) -> bool:
        return self._ended

    def emit(self, event: ev.Event) -> None:
        event.session_id = self.session_id
        self.runner.publish(event)

    async def say(self, text: str, *, interruptible: bool = True) -> None:
        self._n += 1
        seg = f"say-{self._n}"
        self.said.append(text)
        self.emit(ev.AgentSpeechStarted(segment_id=seg, text=text))
        playout = self.transport.playout
        await playout.start_segment(seg)
        for i in range(0, len(TONE), 320):
            await playout.write(TONE[i:i + 320], SAMPLE_RATE)
        await playout.end_segment()
        self.emit(ev.AgentSpeechCompleted(segment_id=seg, text=text))

    async def hangup(self, reason: str) -> None:
        self._ended = True
        await self.transport.hangup(reason)

    async def transfer(self, plan: TransferPlan) -> None:
        raise NotImplementedError("the bus tests' runner carries no transfers or digit collection")

    def consult_progress(self, leg_id: str, progress: ConsultProgress, detail: str = "") -> None:
        # What a warm transfer would hear of its consult legs, wherever Plivo reported them.
        self.consults.append((leg_id, progress, detail))

    async def send_dtmf(self, digits: str) -> None:
        await self.transport.playout.send_dtmf(digits)

    async def collect_digits(self, num_digits: int | None, timeout_s: float,
                             finish_on_key: str | None = "#") -> str:
        raise NotImplementedError("the bus tests' runner carries no transfers or digit collection")

    def listen(self, *, sensitive: bool = False) -> Any:
        raise NotOnThisCall("the bus tests' runner carries no collect tools")

    async def inject(self, text: str) -> None:
        self.injected.append(text)

    # What the control API's reconfiguration reaches (the call host's live update, play and
    # background), recorded.
    def update(self, system_prompt: str | None = None, tools: list[Any] | None = None,
               llm: dict[str, Any] | None = None, new_agent: str = "", **more: Any) -> list[str]:
        if tools is not None and any(not isinstance(t, dict) or "name" not in t for t in tools):
            raise ValueError("tools.0.name: Field required")
        changed = [k for k, v in (("prompt", system_prompt), ("tools", tools), ("llm", llm))
                   if v is not None]
        self.updates.append({"prompt": system_prompt, "tools": tools, "llm": llm})
        return changed

    async def play(self, wav_bytes: bytes, *, interruptible: bool = True) -> str:
        self.played.append(wav_bytes)
        return f"play-{len(self.played)}"

    async def handoff(self, agent_id: str, summary: str = "") -> list[str]:
        raise NotOnThisCall("the bus tests' runner carries no agents to hand over to")

    def play_background(self, sound: str, volume: float = 0.5, loop: bool = True) -> None:
        self.background = (sound, volume, loop)

    def stop_background(self) -> None:
        self.background = None


class ClusterRunner:
    def __init__(self, state: Any) -> None:
        self.state = state
        self.live = LiveCalls()
        self.calls: dict[str, _Call] = {}
        self.started = asyncio.Event()

    def get(self, session_id: str) -> Any:
        return self.live.get(session_id)

    def publish(self, event: ev.Event) -> None:
        if self.state.events is not None:
            self.state.events.publish(event)

    async def run(self, info: CallInfo, transport: CallTransport) -> str:
        call = _Call(self, info, transport)
        self.calls[info.session_id] = call
        self.live.register(info.session_id, call)
        call.emit(ev.SessionStarted(call_uuid=info.call_uuid, direction=info.direction,
                                    from_number=info.from_number, to_number=info.to_number,
                                    agent_id=info.agent_id or "",
                                    agent_version=info.agent_version or 0))
        self.started.set()
        reason = "caller_hangup"
        try:
            async for _ in transport.inbox:  # the caller's audio until they hang up
                pass
            reason = transport.end_reason or reason
        finally:
            call._ended = True
            self.live.unregister(info.session_id, call)
            call.emit(ev.SessionEnded(reason=reason))
        return reason
