"""Digit collection from keypresses (DTMF) and from spoken digits in final transcripts.

The call host owns one `DigitCollector` per call: it feeds every `user.dtmf` digit and every final
user transcript into it, and implements `CallControl.collect_digits` with `collect()`. Input that
arrives while nobody is collecting is ignored, so stray keypresses cannot leak into a later
collection.
"""

from __future__ import annotations

import asyncio
import re

from app.tools.control import CollectTimeout

VALID_KEYS = frozenset("0123456789*#ABCD")

_WORDS = {
    "zero": "0", "oh": "0", "o": "0", "nought": "0",
    "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9",
    "star": "*", "asterisk": "*", "pound": "#", "hash": "#", "hashtag": "#",
}
_REPEAT = {"double": 2, "triple": 3}
_TOKEN = re.compile(r"[a-z]+|[0-9]|[*#]")


def spoken_digits(text: str) -> str:
    """Digits in an utterance: "four one five, double two" → "41522"; "1 2 3" → "123".

    Words that are not digits are skipped, so "my code is one two three" gives "123".
    """
    out: list[str] = []
    repeat = 1
    for tok in _TOKEN.findall(text.lower()):
        if tok in _REPEAT:
            repeat = _REPEAT[tok]
            continue
        digit = _WORDS.get(tok) if tok.isalpha() else tok
        if digit is None:
            repeat = 1
            continue
        out.append(digit * repeat)
        repeat = 1
    return "".join(out)


class DigitCollector:
    def __init__(self) -> None:
        self._digits: list[str] = []
        self._done: asyncio.Future[str] | None = None
        self._num_digits: int | None = None
        self._finish_on_key: str | None = None

    @property
    def active(self) -> bool:
        return self._done is not None and not self._done.done()

    def feed_dtmf(self, digit: str) -> None:
        if not self.active or not digit:
            return
        for d in digit.upper():
            if d in VALID_KEYS:
                self._add(d)

    def feed_transcript(self, text: str) -> None:
        """Give it final transcripts only (partials would count digits twice)."""
        if not self.active:
            return
        for d in spoken_digits(text):
            self._add(d)

    def _add(self, d: str) -> None:
        if not self.active:
            return
        assert self._done is not None
        if self._finish_on_key and d == self._finish_on_key:
            self._done.set_result("".join(self._digits))
            return
        self._digits.append(d)
        if self._num_digits and len(self._digits) >= self._num_digits:
            self._done.set_result("".join(self._digits[: self._num_digits]))

    async def collect(
        self, num_digits: int | None, timeout_s: float, finish_on_key: str | None = "#"
    ) -> str:
        """Wait for `num_digits` digits or `finish_on_key`; CollectTimeout after `timeout_s`.

        Without `num_digits` and `finish_on_key`, whatever arrived by the timeout is the answer.
        """
        if self.active:
            raise RuntimeError("already collecting digits")
        if num_digits is not None and num_digits < 1:
            raise ValueError("num_digits must be at least 1")
        self._digits = []
        self._num_digits = num_digits
        self._finish_on_key = finish_on_key or None
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._done = done
        try:
            return await asyncio.wait_for(asyncio.shield(done), timeout_s)
        except TimeoutError:
            got = "".join(self._digits)
            if got and num_digits is None and not self._finish_on_key:
                return got
            raise CollectTimeout(got) from None
        finally:
            if not done.done():
                done.cancel()
            self._done = None
