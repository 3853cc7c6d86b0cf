"""What a call host needs from a telephony leg, independent of the carrier.

The Plivo stream implements this (app.telephony.plivo.transport); a runner written against it
never sees JSON or WebSockets: caller audio arrives in one bounded `AudioInbox` as 20 ms frames
at the carrier's own rate (with the μ-law bytes when the leg is μ-law), leaves through a
`PlayoutSink`, and call control is two awaitables.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from app.tools.control import TransferPlan
from pipelines.audio.inbox import AudioFormat, AudioInbox
from pipelines.audio.recorder import CallRecorder
from pipelines.ports import PlayoutSink


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    digit: str
    # monotonic time the digit reached us
    at: float = 0.0


@dataclass(slots=True)
class TransportStats:
    messages_skipped: int = 0  # malformed / oversized / unusable inbound messages
    extra: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class CallTransport(Protocol):
    call_uuid: str
    stream_id: str
    codec: str  # e.g. "audio/x-mulaw;rate=8000"

    @property
    def playout(self) -> PlayoutSink:
        """Where the agent's audio goes (read-only here, so a transport may narrow its type)."""
        ...

    @property
    def inbox(self) -> AudioInbox:
        """Caller audio, 20 ms `CallerFrame`s at the carrier's rate; closed when the call ends.
        Its drop counter is the call's one count of caller audio lost to an engine behind."""
        ...

    @property
    def audio_format(self) -> AudioFormat:
        """The carrier leg's format (e.g. μ-law 8 kHz): what the STT may take as it is."""
        ...

    def dtmf(self) -> AsyncIterator[DtmfEvent]:
        """Caller keypresses; ends when the call does."""
        ...

    @property
    def closed(self) -> bool:
        """The far end is gone (stream closed)."""
        ...

    @property
    def end_reason(self) -> str | None:
        """Why the stream ended, once it has (e.g. "caller_hangup", "stream_stopped")."""
        ...

    async def hangup(self, reason: str) -> None:
        """End the call deliberately (carrier REST hangup, not just closing the socket)."""
        ...

    async def transfer(self, plan: TransferPlan) -> None:
        """Cold: hand the caller to the first of `plan.targets` to answer; the stream ends
        afterwards."""
        ...


@runtime_checkable
class ConsultingTransport(Protocol):
    """A leg that can carry a warm transfer: ring a target on a second call (the consult leg,
    whose progress comes back through the call's `consult_progress`), then bridge the caller
    with the target who took it (app.telephony.plivo.transport: a Plivo conference)."""

    async def dial_consult(self, target: str, plan: TransferPlan) -> str:
        """Ring `target`; returns the consult leg's id."""
        ...

    async def drop_consult(self, leg_id: str) -> None:
        """Hang up or cancel a consult leg."""
        ...

    async def bridge(self, leg_id: str, target: str) -> None:
        """Join the caller with the consult leg; the stream (and the agent) leave."""
        ...


@runtime_checkable
class RecordableTransport(Protocol):
    """A leg that can record the call: both sides on its stream's clock, what the caller heard
    on the agent's side (app.telephony.plivo.leg)."""

    def start_recording(self, path: str, channels: int) -> CallRecorder:
        ...
