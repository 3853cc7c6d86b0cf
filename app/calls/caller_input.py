"""What the caller says and keys while a tool, not the conversation, is listening: a part of
the call.

`collect_digits` and the collect tools take the caller's words and keys as their input (turns
are suspended meanwhile). The call feeds every event through `take` (final transcripts reach
the listening tool) and every key through `feed_dtmf`. While a sensitive collection runs (a card
number), and for `SENSITIVE_GRACE_S` after it, the caller's digits are masked in the events
`take` returns, which is what every consumer (report, bus, webhooks, the customer app) reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator

from app.tools.digits import DigitCollector
from app.tools.listen import CallerInput, mask_digits
from pipelines import events as ev

# A final transcript of the last answer may come this long after the collection ended.
SENSITIVE_GRACE_S = 3.0


class CallerInputs:
    def __init__(self) -> None:
        self.digits = DigitCollector()
        self.listener: CallerInput | None = None  # the collect_* tool's input while one runs
        self._sensitive = 0
        self._masked_until = 0.0

    @property
    def collecting(self) -> bool:
        """A tool takes the caller's keys now (they are its input, not a turn)."""
        return self.digits.active or self.listener is not None

    def take(self, event: ev.Event) -> ev.Event:
        """Feed a call event to the listening tool; the event as consumers may see it."""
        if isinstance(event, ev.UserTranscription) and event.is_final:
            self.digits.feed_transcript(event.text)
            if self.listener is not None:
                self.listener.feed_transcript(event.text)
        return self._masked(event)

    def feed_dtmf(self, digit: str) -> None:
        self.digits.feed_dtmf(digit)
        if self.listener is not None:
            self.listener.feed_dtmf(digit)

    async def collect_digits(self, num_digits: int | None, timeout_s: float,
                             finish_on_key: str | None = "#") -> str:
        return await self.digits.collect(num_digits, timeout_s, finish_on_key)

    @contextlib.asynccontextmanager
    async def listen(self, *, sensitive: bool = False) -> AsyncIterator[CallerInput]:
        if self.listener is not None:
            raise RuntimeError("another tool is already listening to the caller")
        heard = self.listener = CallerInput()
        if sensitive:
            self._sensitive += 1
        try:
            yield heard
        finally:
            self.listener = None
            if sensitive:
                self._sensitive -= 1
                self._masked_until = time.monotonic() + SENSITIVE_GRACE_S

    def _masked(self, event: ev.Event) -> ev.Event:
        if self._sensitive == 0 and time.monotonic() >= self._masked_until:
            return event
        if isinstance(event, (ev.UserTranscription, ev.UserTurnCompleted, ev.UserBackchannel)):
            return dataclasses.replace(event, text=mask_digits(event.text))
        if isinstance(event, ev.TurnCompleted):
            return dataclasses.replace(event, user_text=mask_digits(event.user_text))
        if isinstance(event, ev.UserDtmf):
            return dataclasses.replace(event, digit=mask_digits(event.digit))
        return event
