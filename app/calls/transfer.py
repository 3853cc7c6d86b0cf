"""Where a transfer in progress is kept while the carrier fetches its instructions.

A carrier moves the caller's leg by fetching new instructions from us (Plivo: the leg's
`aleg_url`, and a warm transfer's consult leg its answer URL), possibly from any replica. So the
transfer is stored with the session (`sessions.state["_transfer"]`, a reserved key the REST API
neither shows nor lets clients change) and read back by those routes with
`load_pending_transfer()`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from app.calls.state_store import SessionStateStore
from app.tools.control import TransferPlan

TRANSFER_KEY = "_transfer"


@dataclass
class PendingTransfer:
    targets: list[str]
    mode: str = "cold"
    brief: str = ""
    ring_timeout_s: int = 30
    dial_mode: str = "sequential"
    # A warm transfer's meeting point: the consult leg waits there for the caller.
    conference: str = ""
    # The consult leg the caller was bridged with (its hangup is the transfer's last event).
    bridged_leg: str = ""
    requested_at: float = field(default_factory=time.time)

    @classmethod
    def of(cls, plan: TransferPlan, conference: str = "") -> PendingTransfer:
        return cls(targets=list(plan.targets), mode=plan.mode, brief=plan.brief,
                   ring_timeout_s=plan.ring_timeout_s, dial_mode=plan.dial_mode,
                   conference=conference)

    def to_dict(self) -> dict[str, Any]:
        return {"targets": self.targets, "mode": self.mode, "brief": self.brief,
                "ring_timeout_s": self.ring_timeout_s, "dial_mode": self.dial_mode,
                "conference": self.conference, "bridged_leg": self.bridged_leg,
                "requested_at": self.requested_at}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PendingTransfer:
        targets = d.get("targets") or ([d["target"]] if d.get("target") else [])
        return cls(targets=[str(t) for t in targets], mode=str(d.get("mode") or "cold"),
                   brief=str(d.get("brief") or ""),
                   ring_timeout_s=int(d.get("ring_timeout_s") or 30),
                   dial_mode=str(d.get("dial_mode") or "sequential"),
                   conference=str(d.get("conference") or ""),
                   bridged_leg=str(d.get("bridged_leg") or ""),
                   requested_at=float(d.get("requested_at") or 0.0))


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
    if not isinstance(raw, dict):
        return None
    pending = PendingTransfer.from_dict(raw)
    return pending if pending.targets else None
