"""A fake Deepgram that transcribes what the simulated caller has actually said by now.

`bench/turntaking.py` knows, for every utterance it plays, when each word has been spoken (the
send time of the audio plus the word's place in it, on the shared monotonic clock of this
machine). It hands those timelines to this fake (`say`), and the fake answers like a streaming
recogniser: interim results reveal the words spoken so far (all but the newest, word by word, as
the base fake does), and the final after `Finalize` carries every word spoken since the previous
final — so a Finalize sent in a mid-sentence pause gets the first half only, a cough or a noise
burst gets an empty transcript, and the engine's turn-taking decisions are what is measured.
"""

from __future__ import annotations

import bisect
import threading
import time
from typing import Any

from tests.fakes.fake_deepgram import FakeDeepgram

# A final covers the words whose audio ended up to this long after the Finalize was handled:
# the audio before the Finalize is already in, only the send-time bookkeeping may lag.
FINAL_SLACK_S = 0.05


class ScriptedDeepgram(FakeDeepgram):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._lock = threading.Lock()
        self._times: list[float] = []
        self._words: list[str] = []
        self._final_upto = 0  # words before this index were in a final already

    def say(self, words: list[tuple[float, str]]) -> None:
        """Add (monotonic time the word has been said by, word) pairs."""
        with self._lock:
            for t, w in words:
                i = bisect.bisect_right(self._times, t)
                self._times.insert(i, t)
                self._words.insert(i, w)

    def _utterance(self, final: bool) -> str:
        now = time.monotonic() + (FINAL_SLACK_S if final else 0.0)
        with self._lock:
            upto = bisect.bisect_right(self._times, now)
            text = " ".join(self._words[self._final_upto:upto])
            if final:
                self._final_upto = max(self._final_upto, upto)
        return text
