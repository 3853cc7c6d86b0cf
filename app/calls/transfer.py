"""Transferring a live Plivo call to a person: where the target is kept, and the REST step.

Plivo transfers by fetching new XML for the caller's leg (`POST Call/{uuid}/` with `aleg_url`),
which runs once our audio stream ends (plivo.md §5). Plivo may fetch that URL from any replica,
so the pending target is stored with the session (`sessions.state["_transfer"]`, a reserved key
the REST API neither shows nor lets clients change); `/plivo/transfer/{session_id}` reads it back
with `load_pending_transfer()` and answers with a `<Dial>`.

Modes:
- cold: the caller hears the agent's hold line, then ringing, then the target.
- warm: as cold, plus a brief (the agent's summary of the call) spoken to the target when they
  answer and before they are bridged — Plivo's `<Dial confirmSound=URL>`, where URL
  (`brief_url()`) returns `<Response><Speak>brief</Speak></Response>`. A full warm transfer in
  which the agent stays on the line to talk with the target needs a conference bridge and a
  second stream; this runtime does not do that.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.calls.state_store import SessionStateStore
from app.tools.control import normalize_target
from pipelines.events import CallTransferred, Event

TRANSFER_KEY = "_transfer"
MAX_BRIEF_CHARS = 1000
@dataclass
class PendingTransfer:
    target: str
    mode: str = "cold"
    brief: str = ""
    requested_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "mode": self.mode, "brief": self.brief,
                "requested_at": self.requested_at}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PendingTransfer:
        return cls(target=str(d["target"]), mode=str(d.get("mode") or "cold"),
                   brief=str(d.get("brief") or ""),
                   requested_at=float(d.get("requested_at") or 0.0))


def transfer_url(public_url: str, session_id: str) -> str:
    return f"{public_url.rstrip('/')}/plivo/transfer/{session_id}"


def brief_url(public_url: str, session_id: str) -> str:
    return f"{transfer_url(public_url, session_id)}/brief"


async def store_pending_transfer(
    store: SessionStateStore, session_id: str, transfer: PendingTransfer
) -> None:
    await store.patch(session_id, {TRANSFER_KEY: transfer.to_dict()}, allow_reserved=True)


async def load_pending_transfer(
    store: SessionStateStore, session_id: str
) -> PendingTransfer | None:
    """The transfer requested for this session, or None (raises SessionNotFound)."""
    state = await store.get(session_id, include_reserved=True)
    raw = state.get(TRANSFER_KEY)
    if not isinstance(raw, dict) or not raw.get("target"):
        return None
    return PendingTransfer.from_dict(raw)


class TransferRest(Protocol):
    """The part of the Plivo REST client a transfer needs."""

    async def transfer(self, call_uuid: str, *, aleg_url: str, aleg_method: str = "POST") -> Any:
        ...


async def transfer_via_plivo(
    *,
    rest: TransferRest,
    store: SessionStateStore,
    public_url: str,
    session_id: str,
    call_uuid: str,
    target: str,
    mode: str = "cold",
    brief: str = "",
    on_event: Callable[[Event], Any] | None = None,
) -> PendingTransfer:
    """Store the target, ask Plivo to fetch our transfer XML, emit `call.transferred`.

    The caller must end the audio stream afterwards: Plivo runs the new XML only then.
    """
    if mode not in ("cold", "warm"):
        raise ValueError("mode must be 'cold' or 'warm'")
    pending = PendingTransfer(
        target=normalize_target(target), mode=mode,
        brief=brief.strip()[:MAX_BRIEF_CHARS] if mode == "warm" else "",
    )
    await store_pending_transfer(store, session_id, pending)
    await rest.transfer(call_uuid, aleg_url=transfer_url(public_url, session_id),
                        aleg_method="POST")
    if on_event is not None:
        on_event(CallTransferred(session_id=session_id, target=pending.target, mode=mode))
    return pending
