"""How a call ends and where an error happened: the closed vocabularies, in one place.

Both are `StrEnum`s, so a value is also the plain string stored in the database
(`sessions.end_reason`), sent in `session.ended` / `session.error` events and used as a metrics
label; consumers that only read strings see no difference.
"""

from __future__ import annotations

from enum import StrEnum


class EndReason(StrEnum):
    """Why a session ended (`session.ended` reason, `sessions.end_reason`)."""

    # The engine.
    AGENT_HANGUP = "agent_hangup"  # the agent (a tool, the API) hung up
    IDLE = "idle"  # the caller stayed silent through every idle prompt
    MAX_DURATION = "max_duration"
    PROVIDER_ERROR = "provider_error"  # providers failed beyond what their fallbacks absorb
    ERROR = "error"  # the engine itself broke
    STOPPED = "stopped"  # stopped by the host (shutdown)
    VOICEMAIL = "voicemail"
    TRANSFERRED = "transferred"
    APP_UNREACHABLE = "app_unreachable"  # the agent's customer app (websocket_url) never answered
    APP_LOST = "app_lost"  # its socket dropped mid-call and could not be reopened
    # The call host and the carrier edge.
    CALLER_HANGUP = "caller_hangup"
    SETUP_FAILED = "setup_failed"
    STREAM_CLOSED = "stream_closed"
    STREAM_NEVER_CONNECTED = "stream_never_connected"
    HANGUP_BEFORE_STREAM = "hangup_before_stream"
    BUSY = "busy"  # refused at admission: the server is full
    DIAL_FAILED = "dial_failed"
    ENDED = "ended"  # the stream ended and nobody said why


# End reasons that mean the call failed rather than finished normally (besides any reason
# starting with "error"). Some are carrier words that have no member above.
FAILED_END_REASONS = frozenset({
    EndReason.ERROR, EndReason.PROVIDER_ERROR, EndReason.SETUP_FAILED,
    EndReason.APP_UNREACHABLE, EndReason.APP_LOST,
    "failed", "transport_error", "stream_error", "watchdog",
})


def is_failure(reason: str) -> bool:
    return reason in FAILED_END_REASONS or reason.startswith("error")


class ErrorStage(StrEnum):
    """Where a `session.error` happened (its `stage`, the provider-errors metrics label)."""

    VAD = "vad"
    STT = "stt"
    LLM = "llm"
    TTS = "tts"
    TRANSPORT = "transport"
    WATCHDOG = "watchdog"  # no agent audio in time after a turn
    ENGINE = "engine"  # a bug or a broken task inside the engine
    HOST = "host"  # the call host (setup, the run loop around the engine)
    APP = "app"  # the agent's customer app over its WebSocket
    TOOL = "tool"  # the agent's tool servers (an MCP server not reachable at call start)


class TransferPhase(StrEnum):
    """A transfer's progress (`call.transferred` phase)."""

    HANDED_OFF = "handed_off"  # cold: the carrier has the caller now, dialling the target
    HOLDING = "holding"  # warm: the caller is on hold with the agent
    DIALING = "dialing"  # a target's consult leg is ringing
    ANSWERED = "answered"  # a target picked up and is hearing the brief
    NO_ANSWER = "no_answer"  # a target did not pick up, was busy, or hung up before joining
    BRIDGED = "bridged"  # the caller and the target are connected; the agent left
    FAILED = "failed"  # nobody took the call: the caller is back with the agent


class ConsultProgress(StrEnum):
    """What the carrier reports of a warm transfer's consult leg."""

    ANSWERED = "answered"  # the target picked up (the brief plays to them now)
    READY = "ready"  # the target heard the brief and waits in the bridge for the caller
    ENDED = "ended"  # the leg is over (never answered, busy, or hung up)
