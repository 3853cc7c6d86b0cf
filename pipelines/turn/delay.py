"""How much silence to wait for before the caller's turn is over.

One fixed wait is wrong both ways: a caller who has clearly finished waits for nothing, and a
caller who pauses mid-number or mid-sentence is cut off as soon as the wait runs out. So the
end-of-turn probability sets the wait: P at or above the threshold ends the turn at once; below
it the wait grows towards `max_wait_ms` as P falls. The words say what the audio model cannot:
a turn whose transcript ends on "and", "um", a comma, a digit group of a number still being read
out, a month whose day is still to come or letters still being spelled waits the longest.

A caller who already went on after a long pause in this turn is pausing mid-thought (reading
a number off a card, choosing words): however finished the next pause sounds, it is not taken
as the end of the turn before that caller's own pause length has passed (`hesitation_floor_ms`).

Every budget counts from the true end of speech (so `vad.stop_ms` is part of it).
"""

from __future__ import annotations

import re

from pipelines.settings import TurnSettings

_TOKEN = re.compile(r"[a-z0-9']+|[,;:–—-]")
# A turn that stops on one of these is rarely over: the caller is thinking or going on.
CONTINUATIONS = frozenset(
    "and or but because um uh uhm er erm so the a an to of my our your his her their if than "
    "also plus since whether about is are was were for with at in on from that which like "
    "wondering".split())
_DIGIT_WORDS = frozenset(
    "zero oh one two three four five six seven eight nine ten eleven twelve".split())
# Words that announce a digit string long enough to be read out in groups.
_NUMBER_CUES = frozenset(
    "number phone cell mobile card account code zip postcode pin extension reference "
    "confirmation policy order id".split())
# A date stopping on its month ("on June", "born in March") usually has its day to come.
_MONTHS = frozenset(
    "january february march april may june july august september october november december"
    .split())
COMPLETE_NUMBER_DIGITS = 10  # a North American phone number; shorter runs are probably partial
# Three digits read one by one with nothing after them: a number is being read out.
DIGIT_RUN = 3


def _is_digitish(token: str) -> bool:
    return token.isdigit() or token in _DIGIT_WORDS


def looks_unfinished(text: str) -> bool:
    """True when the transcript so far reads like the caller is mid-thought.

    A transcript that ends a sentence (".", "?", "!": STTs punctuate their finals) is taken at
    its word: "What is this about?" is over, "I was wondering about" is not."""
    t = text.strip().lower()
    if not t:
        return False
    if t.endswith((",", ";", ":", "-", "–", "—", "...", "…")):
        return True
    if t.endswith((".", "?", "!")):
        return False
    tokens = _TOKEN.findall(t)
    words = [w for w in tokens if w[0].isalnum()]
    if not words:
        return False
    if words[-1] in CONTINUATIONS or (words[-1] in _MONTHS and len(words) > 1):
        return True
    # A number being read out in groups: "my number is four one five, five five five".
    if _is_digitish(words[-1]):
        digits = 0
        for w in reversed(words):
            if not _is_digitish(w):
                break
            digits += len(w) if w.isdigit() else 1
        cued = any(w in _NUMBER_CUES for w in words)
        if digits < COMPLETE_NUMBER_DIGITS and (cued or digits >= DIGIT_RUN):
            return True
    # Letters being spelled: "it's spelled J O" (single letters at the end).
    tail = 0
    for w in reversed(words):
        if len(w) == 1 and w.isalpha():
            tail += 1
        else:
            break
    return tail >= 2 or (tail >= 1 and "spell" in t)


# A silence the caller went on after that counts as a mid-thought pause, not a breath between
# clauses (a synthetic or a real speaker's breath is ~300 ms).
HESITATION_MS = 400
# How much longer than their longest such pause a hesitant caller is given.
HESITATION_MARGIN_MS = 200


def hesitation_floor_ms(longest_resumed_pause_ms: float, settings: TurnSettings) -> float:
    """The least silence that ends a turn in which the caller already went on after a pause of
    `longest_resumed_pause_ms`: that pause plus a margin (within `max_wait_ms`), or 0 when
    they have not paused mid-thought."""
    if longest_resumed_pause_ms < HESITATION_MS:
        return 0.0
    return min(float(settings.max_wait_ms), longest_resumed_pause_ms + HESITATION_MARGIN_MS)


def silence_budget_ms(probability: float | None, text: str, settings: TurnSettings) -> float:
    """Total silence after the end of speech before the turn is declared over.

    P ≥ threshold: none beyond what was already heard (the caller is done). Below it the budget
    rises linearly from `min_wait_ms` (P just under the threshold) to `max_wait_ms` (P = 0);
    an unfinished-looking transcript, or no probability at all, gets `max_wait_ms`."""
    if looks_unfinished(text):
        return float(settings.max_wait_ms)
    if probability is None:
        return float(settings.max_wait_ms)
    if probability >= settings.threshold:
        return 0.0
    unsure = 1.0 - probability / settings.threshold
    span = max(0.0, settings.max_wait_ms - settings.min_wait_ms)
    return settings.min_wait_ms + span * unsure
