"""The caller's input for a collecting tool (collect_email, collect_phone, ...).

While a collector runs, the call host suspends turns and queues each final transcript (and each
keypad entry ended by `#`) on a `CallerInput`, which the collector's dialogue reads answer by
answer with `next()`. `mask_digits()` is how a sensitive collection (a card number) shows the
caller's words in events: every digit, said or typed, becomes `*`.
"""

from __future__ import annotations

import asyncio
import re

from app.tools.digits import VALID_KEYS

_NUMBER_WORDS = (
    "zero|oh|o|nought|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|"
    "fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fourty|fifty|"
    "sixty|seventy|eighty|ninety|hundred|thousand|double|triple"
)
_MASKED = re.compile(rf"\d|\b(?:{_NUMBER_WORDS})\b", re.IGNORECASE)


def mask_digits(text: str) -> str:
    """"my card is 4242 four two" → "my card is **** * *": numerals and number words masked."""
    return _MASKED.sub("*", text)


class CallerInput:
    """Answers queued for the collector: final transcripts, and keypad entries (keys up to `#`,
    given as one answer of digits)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._keys: list[str] = []

    def feed_transcript(self, text: str) -> None:
        """Final transcripts only (partials would repeat words)."""
        text = text.strip()
        if text:
            self._queue.put_nowait(text)

    def feed_dtmf(self, digits: str) -> None:
        for d in digits.upper():
            if d == "#":
                if self._keys:
                    self._queue.put_nowait("".join(self._keys))
                    self._keys.clear()
            elif d in VALID_KEYS:
                self._keys.append(d)

    def clear(self) -> None:
        """Forget answers not read yet (before asking again)."""
        while not self._queue.empty():
            self._queue.get_nowait()

    async def next(self, timeout_s: float) -> str:
        """The next answer; TimeoutError after `timeout_s` without one."""
        return await asyncio.wait_for(self._queue.get(), timeout_s)
