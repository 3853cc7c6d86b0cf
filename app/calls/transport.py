"""What a call host needs from a telephony leg, independent of the carrier.

The Plivo stream implements this (app.telephony.plivo.transport); a runner written against it
never sees JSON, codecs or WebSockets: audio arrives as 16 kHz int16 20 ms frames, leaves
through a `PlayoutSink`, and call control is two awaitables.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from pipelines.ports import PlayoutSink


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    digit: str
    # monotonic time the digit reached us
    at: float = 0.0


@dataclass(slots=True)
class TransportStats:
    frames_in: int = 0
    frames_dropped: int = 0  # caller audio dropped because the runner fell behind
    messages_skipped: int = 0  # malformed / oversized / unusable inbound messages
    extra: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class CallTransport(Protocol):
    call_uuid: str
    stream_id: str
    codec: str  # e.g. "audio/x-mulaw;rate=8000"
    playout: PlayoutSink

    def frames(self) -> AsyncIterator[np.ndarray]:
        """Caller audio as 16 kHz mono int16 frames of 320 samples; ends when the call does."""
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

    async def transfer(self, target: str, mode: str = "cold", brief: str = "") -> None:
        """Hand the caller to a phone number or SIP URI (`brief` is spoken to the target
        first when mode is "warm"); the stream ends afterwards."""
        ...
