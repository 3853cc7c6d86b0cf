"""Typed events with dotted names, one registry.

The engine emits these through a plain callback; the service fans them out to its sinks (SQL,
webhooks, WebSockets, metrics). Each event carries a wall-clock `ts` for people and a monotonic
`mono` for measuring intervals.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

REGISTRY: dict[str, type[Event]] = {}


def _now() -> float:
    return time.time()


def _mono() -> float:
    return time.monotonic()


@dataclass(kw_only=True)
class Event:
    type: ClassVar[str] = "event"
    session_id: str = ""
    ts: float = field(default_factory=_now)
    mono: float = field(default_factory=_mono)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.type in REGISTRY:
            raise TypeError(f"duplicate event type {cls.type}")
        REGISTRY[cls.type] = cls

    def payload(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("session_id", "ts", "mono"):
            d.pop(k, None)
        return d

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "session_id": self.session_id, "ts": self.ts,
                "data": self.payload()}


EventCallback = Callable[[Event], None]


# --- session -------------------------------------------------------------------------------
@dataclass(kw_only=True)
class SessionStarted(Event):
    type: ClassVar[str] = "session.started"
    call_uuid: str = ""
    direction: str = ""
    from_number: str = ""
    to_number: str = ""
    agent_id: str = ""
    agent_version: int = 0


@dataclass(kw_only=True)
class SessionEnded(Event):
    type: ClassVar[str] = "session.ended"
    reason: str = ""
    duration_s: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class SessionError(Event):
    type: ClassVar[str] = "session.error"
    code: str = ""
    message: str = ""
    stage: str = ""  # stt | llm | tts | tool | transport | watchdog


@dataclass(kw_only=True)
class RecordingCompleted(Event):
    """The call's recording is stored (after `session.ended`)."""

    type: ClassVar[str] = "recording.completed"
    duration_s: float = 0.0
    channels: str = ""  # mono | stereo
    format: str = "wav"
    location: str = ""  # a file path, or the S3 key
    bytes: int = 0


@dataclass(kw_only=True)
class RecordingFailed(Event):
    """The call's recording could not be written or stored (the session's other records are
    not affected)."""

    type: ClassVar[str] = "recording.failed"
    message: str = ""


@dataclass(kw_only=True)
class SessionUsage(Event):
    type: ClassVar[str] = "session.usage"
    provider: str = ""
    model: str = ""
    kind: str = ""
    metric: str = ""
    quantity: float = 0.0


@dataclass(kw_only=True)
class SessionUpdated(Event):
    """The call's configuration changed while it runs (prompt, tools, LLM): it applies from
    the agent's next answer, never to the one being spoken."""

    type: ClassVar[str] = "session.updated"
    fields: list[str] = field(default_factory=list)  # e.g. ["prompt", "tools", "llm"]


@dataclass(kw_only=True)
class AgentHandoff(Event):
    """Another persona took the call over: a stored agent (handoff), or an update that changed
    the system prompt together with the tools or the LLM. The conversation so far stays;
    `new_agent` names it when the update did."""

    type: ClassVar[str] = "agent.handoff"
    new_agent: str = ""  # a stored agent's id when one took over (its version beside it)
    agent_version: int = 0
    fields: list[str] = field(default_factory=list)


# --- user ----------------------------------------------------------------------------------
@dataclass(kw_only=True)
class UserSpeechStarted(Event):
    type: ClassVar[str] = "user.speech_started"


@dataclass(kw_only=True)
class UserSpeechStopped(Event):
    type: ClassVar[str] = "user.speech_stopped"
    speech_ms: float = 0.0


@dataclass(kw_only=True)
class UserTranscription(Event):
    type: ClassVar[str] = "user.transcription"
    text: str = ""
    is_final: bool = False
    confidence: float = 1.0


@dataclass(kw_only=True)
class UserTurnCompleted(Event):
    type: ClassVar[str] = "user.turn_completed"
    turn_id: str = ""
    text: str = ""
    trigger: str = ""  # model | max_wait | vad | dtmf
    eou_probability: float | None = None


@dataclass(kw_only=True)
class UserBackchannel(Event):
    """"mhm", "right", "okay" while the agent talks: acknowledged, never a turn, and the agent
    carries on from where it was."""

    type: ClassVar[str] = "user.backchannel"
    text: str = ""
    speech_ms: float = 0.0


@dataclass(kw_only=True)
class UserDtmf(Event):
    type: ClassVar[str] = "user.dtmf"
    digit: str = ""


@dataclass(kw_only=True)
class UserIdle(Event):
    type: ClassVar[str] = "user.idle"
    prompts_sent: int = 0


@dataclass(kw_only=True)
class UserStateChanged(Event):
    """The caller's presence: `speaking` (VAD start), `listening` (VAD stop) or `away` (the
    idle timer fired with nothing said)."""

    type: ClassVar[str] = "user.state_changed"
    old_state: str = ""
    new_state: str = ""


# --- agent ---------------------------------------------------------------------------------
@dataclass(kw_only=True)
class AgentSpeechCreated(Event):
    """A speech was queued: its audio follows as agent.speech_started/completed segments."""

    type: ClassVar[str] = "agent.speech_created"
    speech_id: str = ""
    source: str = ""  # greeting | reply | say | play | idle | apology | goodbye
    text: str = ""  # what it will say; empty for an answer not generated yet and for audio


@dataclass(kw_only=True)
class AgentSpeechStarted(Event):
    type: ClassVar[str] = "agent.speech_started"
    segment_id: str = ""
    text: str = ""


@dataclass(kw_only=True)
class AgentSpeechCompleted(Event):
    type: ClassVar[str] = "agent.speech_completed"
    segment_id: str = ""
    text: str = ""


@dataclass(kw_only=True)
class AgentSpeechInterrupted(Event):
    type: ClassVar[str] = "agent.speech_interrupted"
    segment_id: str = ""
    heard_text: str = ""
    interrupted_text: str = ""
    barge_in_ms: float = 0.0  # speech onset -> caller stopped hearing the agent


@dataclass(kw_only=True)
class AgentFalseInterruption(Event):
    type: ClassVar[str] = "agent.false_interruption"
    speech_ms: float = 0.0
    text: str = ""


@dataclass(kw_only=True)
class AgentStateChanged(Event):
    type: ClassVar[str] = "agent.state_changed"
    old_state: str = ""
    new_state: str = ""


@dataclass(kw_only=True)
class PlayCompleted(Event):
    """Audio handed to the call with `play` has been played to the end or was cut off."""

    type: ClassVar[str] = "play.completed"
    play_id: str = ""
    interrupted: bool = False


# --- tools ---------------------------------------------------------------------------------
@dataclass(kw_only=True)
class ToolCalled(Event):
    type: ClassVar[str] = "tool.called"
    call_id: str = ""
    name: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class ToolCompleted(Event):
    type: ClassVar[str] = "tool.completed"
    call_id: str = ""
    name: str = ""
    result: Any = None
    latency_ms: float = 0.0


@dataclass(kw_only=True)
class ToolFailed(Event):
    type: ClassVar[str] = "tool.failed"
    call_id: str = ""
    name: str = ""
    error: str = ""
    latency_ms: float = 0.0
    status: str = "error"  # error | timeout | cancelled (as recorded in tool_calls.status)


@dataclass(kw_only=True)
class ToolExecuted(Event):
    """A tool the server runs itself (a webhook or a builtin, not the customer app's) finished;
    `tool.completed` carries its result."""

    type: ClassVar[str] = "tool.executed"
    call_id: str = ""
    tool_name: str = ""
    latency_ms: float = 0.0


@dataclass(kw_only=True)
class AgentToolStarted(Event):
    """A server-side sub-task that talks with the caller (e.g. collecting digits) took over
    the conversation; the agent resumes when it completes or fails."""

    type: ClassVar[str] = "agent_tool.started"
    agent_tool_type: str = ""  # the builtin, e.g. collect_digits
    agent_tool_id: str = ""  # the tool call's id


@dataclass(kw_only=True)
class AgentToolCompleted(Event):
    type: ClassVar[str] = "agent_tool.completed"
    agent_tool_type: str = ""
    agent_tool_id: str = ""
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class AgentToolFailed(Event):
    type: ClassVar[str] = "agent_tool.failed"
    agent_tool_type: str = ""
    agent_tool_id: str = ""
    error: str = ""


# --- turns ---------------------------------------------------------------------------------
@dataclass(kw_only=True)
class TurnCompleted(Event):
    type: ClassVar[str] = "turn.completed"
    turn_id: str = ""
    user_text: str = ""
    agent_text: str = ""
    heard_text: str = ""
    interrupted: bool = False


@dataclass(kw_only=True)
class TurnMetrics(Event):
    """Per-turn latency breakdown, all in ms; None where a stage did not happen."""

    type: ClassVar[str] = "turn.metrics"
    turn_id: str = ""
    vad_stop_to_eou_ms: float | None = None
    eou_to_stt_final_ms: float | None = None
    llm_ttft_ms: float | None = None
    tts_ttfb_ms: float | None = None
    first_audio_out_ms: float | None = None  # vad stop -> first agent audio written
    played_ack_ms: float | None = None  # vad stop -> first playedStream ack
    server_added_ms: float | None = None  # first_audio_out minus time spent waiting on providers
    preemptive: bool = False  # the answer was generated before the turn ended
    # Stage times from the end of the caller's speech (the durations above do not say when).
    stt_final_at_ms: float | None = None
    llm_request_at_ms: float | None = None
    llm_first_token_at_ms: float | None = None
    tts_request_at_ms: float | None = None
    tts_first_byte_at_ms: float | None = None


# --- call ----------------------------------------------------------------------------------
@dataclass(kw_only=True)
class CallTransferred(Event):
    """A transfer's progress. A cold transfer has one phase, `handed_off`; a warm one goes
    `holding` → (`dialing` → `answered` | `no_answer`, per target) → `bridged` | `failed`."""

    type: ClassVar[str] = "call.transferred"
    target: str = ""
    mode: str = "cold"
    phase: str = "handed_off"  # a pipelines.outcomes.TransferPhase
    reason: str = ""  # no_answer / failed: the carrier's status (busy, no-answer, timeout...)


@dataclass(kw_only=True)
class ParticipantAdded(Event):
    """Someone joined the call besides the caller and the agent (a warm-transfer target who
    picked up the consult leg)."""

    type: ClassVar[str] = "participant.added"
    participant: str = ""  # the number or SIP URI
    role: str = "transfer_target"
    leg_id: str = ""


@dataclass(kw_only=True)
class ParticipantRemoved(Event):
    """A participant left: a transfer target who hung up or was released, or the agent once
    the caller is bridged with a person."""

    type: ClassVar[str] = "participant.removed"
    participant: str = ""
    role: str = "transfer_target"  # or "agent"
    leg_id: str = ""
    reason: str = ""


@dataclass(kw_only=True)
class DtmfSent(Event):
    type: ClassVar[str] = "dtmf.sent"
    digits: str = ""


@dataclass(kw_only=True)
class VoicemailDetected(Event):
    type: ClassVar[str] = "voicemail.detected"
    result: str = ""  # machine | human
    method: str = ""  # transcript | beep | timeout


@dataclass(kw_only=True)
class VoicemailBeep(Event):
    """An answering machine's beep was heard: its recording starts when the tone ends."""

    type: ClassVar[str] = "voicemail.beep"
    frequency_hz: float = 0.0
    at_ms: float = 0.0  # stream position where the tone began


@dataclass(kw_only=True)
class ProviderFallback(Event):
    type: ClassVar[str] = "provider.fallback"
    kind: str = ""
    from_provider: str = ""
    to_provider: str = ""
    error: str = ""
