"""Plivo's side of a warm transfer's consult legs, and the people it rings.

Hooked to the fake REST API's `POST Call/`: for each number it plays one person, as Plivo would
report them to our URLs (form posts, V3-signed by the simulator):
- "answer": picks up: fetches the answer URL, hears the `<Speak>`, follows the `<Redirect>`
  and joins the `<Conference>` it gets;
- "busy" / "no-answer": never picks up; the hangup URL says so after a short ring;
- "leave": picks up, then hangs up while hearing the brief;
- "ringing": rings until cancelled.
A leg our server cancels (`DELETE Call|Request/`) reports `cancel` (or `completed` once
answered) to its hangup URL, as Plivo does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from app.simulator.far_end import PlivoSimulator


@dataclass
class ConsultLeg:
    leg_id: str
    to: str
    request: dict[str, Any]
    answered: bool = False
    heard: list[str] = field(default_factory=list)  # what <Speak> told them
    conference: str | None = None  # where they waited for the caller
    hung_up: str | None = None  # the CallStatus their hangup URL got


class ConsultPhones:
    def __init__(self, sim: PlivoSimulator, people: dict[str, str], *,
                 ring_s: float = 0.3) -> None:
        self.sim = sim
        self.people = people  # number as dialled (digits) -> answer | busy | no-answer | leave
        self.ring_s = ring_s
        self.legs: dict[str, ConsultLeg] = {}
        self.rest: Any = None

    def hook(self, rest: Any) -> None:
        """Take the fake REST API's make-call, and its hangups of our legs."""
        rest.on_make_call = self.on_make_call
        self.rest = rest
        others: Callable[[str], Awaitable[None]] | None = rest.on_hangup

        async def on_hangup(uuid: str) -> None:
            if uuid in self.legs:
                await self._hangup(self.legs[uuid], "completed" if self.legs[uuid].answered
                                   else "cancel")
            elif others is not None:
                await others(uuid)

        rest.on_hangup = on_hangup

    def by_number(self, to: str) -> ConsultLeg:
        (leg,) = [leg for leg in self.legs.values() if leg.to == to.lstrip("+")]
        return leg

    async def on_make_call(self, body: dict[str, Any], request_uuid: str) -> None:
        leg = ConsultLeg(request_uuid, str(body["to"]), body)
        self.legs[request_uuid] = leg
        await asyncio.sleep(self.ring_s)
        who = self.people.get(leg.to, "no-answer")
        if leg.hung_up is not None or who == "ringing":
            return  # cancelled while ringing, or left ringing
        if who in ("busy", "no-answer"):
            await self._hangup(leg, who)
            return
        leg.answered = True
        self.rest.answered(leg.leg_id)
        doc = await self._post(leg, body["answer_url"], "in-progress")
        speak = doc.find("Speak")
        if speak is not None:
            leg.heard.append(speak.text or "")
        if who == "leave":
            await self._hangup(leg, "completed")
            return
        redirect = doc.find("Redirect")
        if redirect is None or leg.hung_up is not None:
            return
        doc = await self._post(leg, redirect.text or "", "in-progress")
        conference = doc.find("Conference")
        if conference is not None:
            leg.conference = conference.text

    async def hang_up(self, leg: ConsultLeg) -> None:
        """The person hangs up (after talking with the caller)."""
        await self._hangup(leg, "completed")

    async def _hangup(self, leg: ConsultLeg, status: str) -> None:
        if leg.hung_up is not None:
            return
        leg.hung_up = status
        with contextlib.suppress(Exception):
            await self._post(leg, leg.request["hangup_url"], status)

    async def _post(self, leg: ConsultLeg, url: str, status: str) -> Any:
        params = {"CallUUID": leg.leg_id, "RequestUUID": leg.leg_id, "To": leg.to,
                  "From": str(leg.request["from"]), "Direction": "outbound",
                  "CallStatus": status}
        resp = await self.sim.request("POST", url, params)
        if resp.status_code != 200:
            raise AssertionError(f"{url}: HTTP {resp.status_code}")
        return etree.fromstring(resp.content) if resp.content.startswith(b"<") else None
