"""Sentence segmentation of streamed LLM text, so TTS can start on the first sentence.

The LLM streams small deltas; TTS wants whole sentences (prosody) but as early as possible
(latency). `SentenceSegmenter.push` returns every sentence completed by a delta; `flush` returns
the rest when the stream ends. A sentence ends at `.`, `!`, `?` or `…` (plus closing quotes or
brackets) followed by whitespace, or at a line break; abbreviations ("Dr.", "e.g."), initials
("J.") and list numbers ("1.") do not end one. CJK full stops end a sentence without a space.
A run-on buffer longer than `max_chars` is cut at the last clause break or space so a model that
never uses full stops cannot stall speech. With `first_clause_chars`, the *first* piece of a
response may also end at a clause break ("Hello, ...", "We are open Monday to Friday, ..."): the
caller hears the answer begin a sentence's worth of generation and synthesis sooner, and the rest
of the sentence is ready before that clause has finished playing.

`clean_for_speech` strips the markdown that chat models like to emit (`**bold**`, `# headers`,
list bullets, backticks) so the voice does not read punctuation aloud.
"""

from __future__ import annotations

import re

_TERMINATORS = frozenset(".!?…")
_CJK_TERMINATORS = frozenset("。！？")
_CLOSERS = frozenset("\"')]}»”’")
# Lower-cased tokens (without the final dot) that a dot follows without ending the sentence.
_ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "inc",
    "ltd", "co", "corp", "approx", "dept", "est", "mt", "ave", "blvd", "rd", "apt", "no",
    "tel", "fig", "a.m", "p.m", "u.s", "u.k", "jan", "feb", "mar", "apr", "jun", "jul", "aug",
    "sep", "sept", "oct", "nov", "dec",
})
_CLAUSE_BREAKS = (", ", "; ", ": ", " - ", " – ", " — ")

_MD_EMPHASIS = re.compile(r"(\*{1,3}|_{2,3}|~~|`+)")
_MD_LINE_PREFIX = re.compile(r"^\s*(?:#{1,6}\s+|[-*+•]\s+|>\s+)", re.MULTILINE)
_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_SPACES = re.compile(r"\s+")


def clean_for_speech(text: str) -> str:
    """Remove markdown decoration and collapse whitespace (what TTS should read)."""
    text = _MD_LINK.sub(r"\1", text)
    text = _MD_LINE_PREFIX.sub("", text)
    text = _MD_EMPHASIS.sub("", text)
    return _SPACES.sub(" ", text).strip()


class SentenceSegmenter:
    """Incremental sentence splitter for one LLM response.

    `min_chars`: a candidate sentence shorter than this is merged with the next one (avoids
    synthesising "1." or "Hi." alone only when they are really tiny). `max_chars`: cut a buffer
    without any sentence end at a clause break or space once it reaches this size.
    """

    __slots__ = ("_buf", "_emitted", "_scan", "first_clause_chars", "max_chars", "min_chars")

    def __init__(self, *, min_chars: int = 2, max_chars: int = 250,
                 first_clause_chars: int = 0) -> None:
        if max_chars < 20:
            raise ValueError("max_chars must be at least 20")
        self.min_chars = min_chars
        self.max_chars = max_chars
        # > 0: the first piece may end at a clause break once it is at least this long.
        self.first_clause_chars = first_clause_chars
        self._buf = ""
        self._scan = 0  # buffer index up to which no sentence end was found
        self._emitted = 0  # pieces returned so far

    def push(self, delta: str) -> list[str]:
        """Add a text delta; return the sentences it completed (possibly none)."""
        if not delta:
            return []
        self._buf += delta
        out: list[str] = []
        while True:
            end = self._find_end()
            if end is None and not self._emitted and self.first_clause_chars > 0:
                end = self._first_clause_end()
            if end is None:
                break
            self._emit(end, out)
        while len(self._buf) >= self.max_chars:
            self._emit(self._forced_cut(), out)
        return out

    def flush(self) -> list[str]:
        """End of the stream: whatever is left is the last sentence."""
        out: list[str] = []
        self._emit(len(self._buf), out)
        self._buf = ""
        self._scan = 0
        return out

    # -- internals ----------------------------------------------------------------------------
    def _emit(self, end: int, out: list[str]) -> None:
        sentence = clean_for_speech(self._buf[:end])
        self._buf = self._buf[end:]
        self._scan = 0
        if sentence:
            out.append(sentence)
            self._emitted += 1

    def _find_end(self) -> int | None:
        """Index just past the first complete sentence in the buffer, or None."""
        buf = self._buf
        n = len(buf)
        i = self._scan
        while i < n:
            c = buf[i]
            if c == "\n":
                if buf[:i].strip():
                    return i + 1
            elif c in _CJK_TERMINATORS:
                j = self._skip_closers(i + 1)
                if len(buf[:j].strip()) >= self.min_chars:
                    return j
            elif c in _TERMINATORS:
                j = self._skip_terminators(i + 1)
                j = self._skip_closers(j)
                if j >= n:
                    # Cannot tell yet whether "3." is "3.5" or a sentence end: wait for more.
                    self._scan = i
                    return None
                if buf[j].isspace() and self._is_sentence_end(i, j):
                    return j
                i = j
                continue
            i += 1
        self._scan = n
        return None

    def _first_clause_end(self) -> int | None:
        """Index just past the first clause break (", " etc.) whose clause is long enough."""
        buf = self._buf
        best: int | None = None
        for brk in _CLAUSE_BREAKS:
            pos = buf.find(brk)
            while pos >= 0 and len(buf[:pos].strip()) < self.first_clause_chars:
                pos = buf.find(brk, pos + 1)
            if pos >= 0 and (best is None or pos + len(brk) < best):
                best = pos + len(brk)
        return best

    def _skip_terminators(self, j: int) -> int:
        while j < len(self._buf) and self._buf[j] in _TERMINATORS:
            j += 1
        return j

    def _skip_closers(self, j: int) -> int:
        while j < len(self._buf) and self._buf[j] in _CLOSERS:
            j += 1
        return j

    def _is_sentence_end(self, dot: int, end: int) -> bool:
        candidate = self._buf[:end].strip()
        if len(candidate) < self.min_chars:
            return False
        if self._buf[dot] != ".":
            return True
        # The token right before the dot decides whether it is an abbreviation.
        k = dot
        while k > 0 and not self._buf[k - 1].isspace():
            k -= 1
        token = self._buf[k:dot].lower().lstrip("\"'([{")
        if not token:
            return True
        if token in _ABBREVIATIONS:
            return False
        if len(token) == 1 and token.isalpha():
            return False  # an initial: "J. R. R. Tolkien"
        if token.isdigit() and not self._buf[:k].strip():
            return False  # a list number at the start: "1. Open the app"
        return True

    def _forced_cut(self) -> int:
        head = self._buf[: self.max_chars]
        best = -1
        for brk in _CLAUSE_BREAKS:
            pos = head.rfind(brk)
            if pos > 0:
                best = max(best, pos + len(brk))
        if best > self.max_chars // 3:
            return best
        space = head.rfind(" ")
        return space if space > 0 else self.max_chars


def split_sentences(text: str, **kwargs: int) -> list[str]:
    """Whole-text convenience: the sentences of a complete string."""
    seg = SentenceSegmenter(**kwargs)
    return seg.push(text) + seg.flush()
