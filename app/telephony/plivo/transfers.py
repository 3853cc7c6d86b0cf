"""Transfers on Plivo: the REST steps and the URLs whose XML carries them out.

Cold: the plan is stored with the session, then `POST Call/{uuid}/` (legs=aleg, aleg_url =
/plivo/transfer/{sid}). That XML is "subsequent XML": Plivo runs it once our audio stream ends,
so the stream is closed right after. It `<Dial>`s the targets: all at once (parallel, the first
to answer gets the caller), or one by one, each `<Dial>`'s action URL dialling the next one when
the previous did not answer.

Warm: the caller stays on our stream, on hold, while each target is rung on its own call
(`POST Call/`, answer URL /plivo/consult/{sid}/answer, hangup URL .../hangup). A target who
picks up hears the brief, then is redirected to .../join, which tells the call they are ready
and puts them in conference `pb-{sid}`. The caller's leg is then moved (aleg_url, as above)
into the same conference, and our stream ends: the agent has left. A target who never answers
(or hangs up) shows up at the hangup URL; the call cancels legs it gives up on.
"""

from __future__ import annotations

import logging
from typing import Protocol

from app.calls.state_store import SessionStateStore
from app.calls.transfer import PendingTransfer, store_pending_transfer
from app.tools.control import TransferPlan

log = logging.getLogger(__name__)

CONFERENCE_PREFIX = "pb-"


def conference_name(session_id: str) -> str:
    return f"{CONFERENCE_PREFIX}{session_id}"


def transfer_url(public_url: str, session_id: str) -> str:
    return f"{public_url.rstrip('/')}/plivo/transfer/{session_id}"


def consult_url(public_url: str, session_id: str, step: str) -> str:
    """answer | join | hangup: the consult leg's own URLs."""
    return f"{public_url.rstrip('/')}/plivo/consult/{session_id}/{step}"


def dial_string(target: str) -> str:
    """How Plivo's `to` (and `<Number>`) wants a target: digits with the country code and no
    '+', or the SIP URI as it is."""
    return target if target.lower().startswith(("sip:", "sips:")) else target.lstrip("+")


class TransferRest(Protocol):
    """The part of the Plivo REST client transfers need."""

    async def transfer(self, call_uuid: str, aleg_url: str, aleg_method: str = "POST"
                       ) -> object: ...

    async def make_call(self, *, from_: str, to: str, answer_url: str,
                        answer_method: str = "POST", hangup_url: str | None = None,
                        hangup_method: str = "POST", ring_timeout: int | None = None,
                        time_limit: int | None = None, caller_name: str | None = None,
                        extra: dict[str, object] | None = None) -> dict[str, object]: ...

    async def cancel(self, call_uuid: str) -> None: ...


class PlivoTransfers:
    """One call's transfers through Plivo's REST API."""

    def __init__(self, *, rest: TransferRest, store: SessionStateStore, public_url: str,
                 session_id: str, call_uuid: str, caller_id: str) -> None:
        self._rest = rest
        self._store = store
        self._public_url = public_url
        self._session_id = session_id
        self._call_uuid = call_uuid
        # The consult leg shows the number the caller dialled (ours), not the caller's.
        self._caller_id = caller_id
        self._plan: TransferPlan | None = None
        self._stored: PendingTransfer | None = None

    async def hand_off(self, plan: TransferPlan) -> None:
        """Cold: Plivo dials the targets once our stream ends."""
        await store_pending_transfer(self._store, self._session_id, PendingTransfer.of(plan))
        await self._rest.transfer(self._call_uuid, aleg_url=self._transfer_url(),
                                  aleg_method="POST")

    async def dial(self, target: str, plan: TransferPlan) -> str:
        """Warm: ring `target` on a consult leg; returns the leg's id (Plivo's request UUID,
        which becomes the call's UUID)."""
        if self._plan is not plan:
            # The consult leg's answer URL may be served by another replica: it reads the brief
            # and the meeting point from the session.
            self._plan = plan
            self._stored = PendingTransfer.of(plan, conference=conference_name(self._session_id))
            await store_pending_transfer(self._store, self._session_id, self._stored)
        resp = await self._rest.make_call(
            from_=dial_string(self._caller_id), to=dial_string(target),
            answer_url=consult_url(self._public_url, self._session_id, "answer"),
            hangup_url=consult_url(self._public_url, self._session_id, "hangup"),
            ring_timeout=plan.ring_timeout_s)
        return str(resp["request_uuid"])

    async def drop(self, leg_id: str) -> None:
        """Give up on a consult leg, ringing or answered."""
        await self._rest.cancel(leg_id)

    async def bridge(self, leg_id: str) -> None:
        """Warm: move the caller into the conference where the target waits."""
        if self._stored is not None:
            self._stored.bridged_leg = leg_id
            await store_pending_transfer(self._store, self._session_id, self._stored)
        await self._rest.transfer(self._call_uuid, aleg_url=self._transfer_url(),
                                  aleg_method="POST")

    def _transfer_url(self) -> str:
        return transfer_url(self._public_url, self._session_id)
