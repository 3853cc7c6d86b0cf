"""Soft barge-in: deciding whether caller speech during agent speech is a real interruption.

On VAD speech onset the conversation *holds* the agent (stops feeding new audio; what is already
queued at the far end keeps playing) and asks this policy, as speech and transcripts arrive,
whether to commit the interruption or resume:

- commit once the caller has spoken `min_speech_ms` AND the words recognised since onset number at
  least `min_words` and are not all backchannels ("mhm", "yeah", "okay", ...);
- sustained speech with no transcript at all (a batch-only STT that transcribes on flush) commits
  when the hold window (`false_interruption_timeout_ms`) runs out while the caller is still
  talking: yielding to someone who keeps talking beats talking over them;
- otherwise it is a false interruption (a cough, a "mhm", a door): resume from the held position.
  That happens when speech stops too short, when the transcript is only backchannels, or when the
  window expires without qualifying words.

The policy is pure (no I/O, no clock) so it is unit-testable; the conversation supplies the facts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pipelines.settings import InterruptionSettings

_WORD = re.compile(r"[a-z0-9']+(?:-[a-z0-9']+)*")

Verdict = Literal["commit", "resume"]


def words(text: str) -> list[str]:
    """Lower-cased word tokens; hyphenated backchannels like "uh-huh" stay one token."""
    return _WORD.findall(text.lower())


class BackchannelFilter:
    """Counts the words of a transcript that are not backchannel phrases."""

    def __init__(self, phrases: Iterable[str]) -> None:
        seqs = {tuple(words(p)) for p in phrases}
        seqs.discard(())
        # Longest first so "uh huh" is consumed as one phrase before "uh" alone.
        self._phrases = sorted(seqs, key=len, reverse=True)

    def content_words(self, tokens: list[str]) -> int:
        """How many tokens remain once every backchannel phrase is removed."""
        remaining = 0
        i = 0
        n = len(tokens)
        while i < n:
            for p in self._phrases:
                k = len(p)
                if tuple(tokens[i : i + k]) == p:
                    i += k
                    break
            else:
                remaining += 1
                i += 1
        return remaining

    def is_backchannel(self, text: str) -> bool:
        tokens = words(text)
        return bool(tokens) and self.content_words(tokens) == 0


@dataclass(slots=True)
class BargeFacts:
    speech_ms: float  # caller speech since the onset (all utterances in this hold)
    speaking: bool  # VAD says the caller is talking right now
    text: str  # everything recognised since the onset (finals + latest interim)
    window_expired: bool  # false_interruption window (or the final-transcript wait) is over
    awaiting_final: bool  # speech stopped and a final transcript was requested but not yet seen


class InterruptionPolicy:
    def __init__(self, settings: InterruptionSettings) -> None:
        self.settings = settings
        self.backchannels = BackchannelFilter(settings.backchannels)

    def words_qualify(self, text: str) -> bool:
        """≥ min_words words, not all of them backchannels (with min_words 0: not all
        backchannels, and an empty transcript qualifies)."""
        tokens = words(text)
        if not tokens:
            return self.settings.min_words == 0
        return len(tokens) >= self.settings.min_words and self.backchannels.content_words(
            tokens
        ) > 0

    def decide(self, f: BargeFacts) -> Verdict | None:
        """"commit", "resume", or None (keep holding, more facts will come)."""
        s = self.settings
        long_enough = f.speech_ms >= s.min_speech_ms
        if long_enough and self.words_qualify(f.text):
            return "commit"
        if f.speaking:
            if f.window_expired:
                # Still talking at the end of the window: commit only if nothing was recognised
                # (an STT that has not produced words yet); a backchannel-only transcript
                # ("yeah yeah yeah") is not an attempt to take the turn.
                return "commit" if long_enough and not words(f.text) else "resume"
            return None
        # Speech has stopped.
        if not long_enough:
            return "resume"
        if words(f.text) and self.backchannels.is_backchannel(f.text):
            # Only "mhm"/"okay" was heard and the caller has stopped: resume now rather than
            # keep the agent silent for a final that almost never says more.
            return "resume"
        if f.awaiting_final and not f.window_expired:
            return None
        return "resume"
