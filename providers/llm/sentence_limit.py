"""Ending a spoken answer after a few sentences.

Small local models ramble: asked for "one or two short sentences" SmolLM2 still often writes a
third and a fourth, and every extra sentence is seconds of audio the caller has to sit through
(or barge into). `SentenceLimit` watches the streamed text and says where the Nth sentence ended,
so generation can stop right there instead of at `max_tokens` in the middle of a sentence.

A sentence ends at `.`, `!`, `?` or `…` (plus closing quotes or brackets) followed by whitespace.
A dot after a common abbreviation ("Dr.", "a.m.") or a single letter (an initial) does not end
one. The check needs the character after the terminator, so an end is confirmed one token late;
the text passed on stops just after the terminator.
"""

from __future__ import annotations

_TERMINATORS = frozenset(".!?…")
_CLOSERS = frozenset("\"')]}»”’")
_ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "a.m", "p.m",
    "no", "approx", "ave", "rd", "apt", "inc", "ltd",
})


class SentenceLimit:
    """Feed it the streamed deltas; it returns what to pass on and when to stop."""

    __slots__ = ("_ends", "_max", "_scan", "_text")

    def __init__(self, max_sentences: int) -> None:
        if max_sentences < 1:
            raise ValueError("max_sentences must be at least 1")
        self._max = max_sentences
        self._text = ""
        self._scan = 0  # text before this index holds no unconfirmed sentence end
        self._ends = 0

    def feed(self, delta: str) -> tuple[str, bool]:
        """(the part of `delta` to pass on, whether the answer is complete and should stop)."""
        start = len(self._text)
        self._text += delta
        text, n = self._text, len(self._text)
        i = self._scan
        while i < n:
            if text[i] not in _TERMINATORS:
                i += 1
                continue
            j = i + 1
            while j < n and (text[j] in _TERMINATORS or text[j] in _CLOSERS):
                j += 1
            if j >= n:
                self._scan = i  # decided by the next delta
                return delta, False
            if text[j].isspace() and self._ends_sentence(i, j):
                self._ends += 1
                if self._ends >= self._max:
                    return text[start:j] if j > start else "", True
            i = j
        self._scan = n
        return delta, False

    def _ends_sentence(self, first: int, end: int) -> bool:
        """Whether the terminator run text[first:end] (closers included) ends a sentence."""
        text = self._text
        if not text[:first].strip():
            return False  # nothing before it: "..." opening an answer
        if any(c in _TERMINATORS and c != "." for c in text[first:end]):
            return True  # "!", "?", "…"
        k = first
        while k > 0 and not text[k - 1].isspace():
            k -= 1
        word = text[k:first].lower().lstrip("\"'([{")
        if word in _ABBREVIATIONS:
            return False
        return not (len(word) == 1 and word.isalpha())  # an initial: "J. Smith"
