"""A live Plivo stream seen as a carrier-neutral `app.calls.transport.CallTransport`.

The stream handler pushes media payloads and keypresses in (`SocketLeg`). Caller audio is cut
into 20 ms frames and decoded at the stream's own rate (μ-law bytes kept alongside), and lands
in the call's one bounded `AudioInbox`, which the engine reads: if it falls behind by more than
a few seconds the oldest audio is dropped and counted there, once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from app.telephony.plivo.codec import StreamCodec
from app.telephony.plivo.leg import SocketLeg
from app.telephony.plivo.playout import PlivoPlayout
from app.telephony.plivo.rest import PlivoNotConfigured, PlivoRestClient
from app.telephony.plivo.transfers import PlivoTransfers
from app.tools.control import TransferPlan

log = logging.getLogger(__name__)


class PlivoTransport(SocketLeg):
    """Also a `ConsultingTransport`: warm transfers ring targets on consult legs."""

    def __init__(
        self,
        *,
        session_id: str,
        call_uuid: str,
        stream_id: str,
        codec: StreamCodec,
        playout: PlivoPlayout,
        rest: PlivoRestClient | None,
        transfers: PlivoTransfers | None,
        close_stream: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(session_id=session_id, call_uuid=call_uuid, stream_id=stream_id,
                         codec=codec, playout=playout)
        self._rest = rest
        self._transfers = transfers
        self._close_stream = close_stream
        self.transferred_to: str | None = None

    async def hangup(self, reason: str) -> None:
        """Hang up through the REST API; without credentials, end the stream instead."""
        self._mark_hangup(reason)
        if self._closed:
            return
        if self._rest is not None and self._rest.configured:
            await self._rest.hangup(self.call_uuid)
            return
        log.warning("session %s: Plivo REST not configured; closing the stream to end the call "
                    "(Plivo ends it with 'End Of XML Instructions')", self.session_id)
        await self._close_stream()

    def _plivo_transfers(self) -> PlivoTransfers:
        if self._transfers is None or self._rest is None or not self._rest.configured:
            raise PlivoNotConfigured("transfer needs the Plivo REST API "
                                     "(set plivo.auth_id and plivo.auth_token)")
        return self._transfers

    async def transfer(self, plan: TransferPlan) -> None:
        """Cold: have Plivo fetch our `<Dial>` XML, then end the stream (the new XML runs only
        once the stream is gone)."""
        await self._plivo_transfers().hand_off(plan)
        await self._leave(", ".join(plan.targets))

    async def dial_consult(self, target: str, plan: TransferPlan) -> str:
        return await self._plivo_transfers().dial(target, plan)

    async def drop_consult(self, leg_id: str) -> None:
        await self._plivo_transfers().drop(leg_id)

    async def bridge(self, leg_id: str, target: str) -> None:
        await self._plivo_transfers().bridge(leg_id)
        await self._leave(target)

    async def _leave(self, target: str) -> None:
        self.transferred_to = target
        self._mark_hangup("transferred")
        await self._close_stream()

    def push_media(self, payload: bytes) -> None:
        """A `media` payload in the stream's codec."""
        self.push_audio(payload)
