"""A browser microphone seen as a carrier-neutral `app.calls.transport.CallTransport`.

The playground socket speaks a small subset of Plivo's bidirectional stream protocol, so a
browser call runs through exactly the engine path of a phone call, including the paced playout:

- up, binary frames: the caller's audio as 16 kHz mono little-endian PCM16 (any length);
- up, JSON text: `playedStream {name}` once the browser has played up to a checkpoint,
  `clearedAudio` after it dropped its buffer, `dtmf {dtmf: {digit}}`, `stop`;
- down, JSON text: `playAudio` (base64 L16 16 kHz), `checkpoint {name}`, `clearAudio`, from the
  same `PlivoPlayout` a phone call uses; plus the console's own messages (see playground.py).

Caller audio goes into the call's one bounded `AudioInbox`, as for a phone stream: if the
engine falls behind by more than a few seconds the oldest audio is dropped and counted there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from app.telephony.plivo.codec import L16, StreamCodec
from app.telephony.plivo.leg import SocketLeg
from app.telephony.plivo.playout import PlivoPlayout
from app.tools.control import TransferPlan

BROWSER_CODEC = StreamCodec(L16, 16000)


class BrowserTransportError(ValueError):
    """Something a browser call cannot do (e.g. be transferred to a phone number)."""


class BrowserTransport(SocketLeg):
    def __init__(
        self,
        *,
        session_id: str,
        call_uuid: str,
        playout: PlivoPlayout,
        close: Callable[[str], Awaitable[None]],
    ) -> None:
        super().__init__(session_id=session_id, call_uuid=call_uuid, stream_id=call_uuid,
                         codec=BROWSER_CODEC, playout=playout)
        self._close = close

    async def hangup(self, reason: str) -> None:
        """The agent (or the API) ends the call: tell the browser and close the socket."""
        self._mark_hangup(reason)
        if not self._closed:
            await self._close(reason)

    async def transfer(self, plan: TransferPlan) -> None:
        raise BrowserTransportError("a playground call has no phone line to transfer")
