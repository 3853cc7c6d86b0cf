"""The caller's words for the turn in progress, as the STT reports them.

Streaming STTs send interim hypotheses (each replacing the previous) and finals (appended);
batch STTs send one final per flush. The turn's text is the finals plus, if the STT never
finalised, its last interim. A sequence number counts finals so the conversation can wait for
"a final after this point" (end of turn, barge-in decisions), and marks let it take or drop
"everything said since the barge-in onset".

While `discarding` (after a false interruption, until the caller speaks again) results are not
kept: late finals of a cough or a "mhm" must not become part of the next turn.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Mark:
    finals: int
    interim: str


class TranscriptBuffer:
    def __init__(self, max_finals: int = 200) -> None:
        self._max_finals = max_finals
        self.finals: list[str] = []
        self.interim = ""
        self.seq = 0  # finals received so far (kept or not)
        self.discarding = False
        self._arrived = asyncio.Event()

    def add(self, text: str, is_final: bool) -> None:
        text = text.strip()
        if is_final:
            self.interim = ""
            if text and not self.discarding:
                if len(self.finals) >= self._max_finals:  # a monologue stays bounded
                    self.finals[-2:] = [" ".join(self.finals[-2:])]
                self.finals.append(text)
            self.seq += 1
            # Wake everyone waiting for a final, then start a fresh event for the next one.
            self._arrived.set()
            self._arrived = asyncio.Event()
        elif not self.discarding:
            self.interim = text

    def text(self) -> str:
        parts = list(self.finals)
        if self.interim:
            parts.append(self.interim)  # the STT never finalised: its best guess beats nothing
        return " ".join(parts).strip()

    @property
    def empty(self) -> bool:
        return not self.finals and not self.interim

    def mark(self) -> Mark:
        return Mark(len(self.finals), self.interim)

    def text_since(self, mark: Mark) -> str:
        parts = self.finals[mark.finals:]
        if self.interim and (parts or self.interim != mark.interim):
            parts = [*parts, self.interim]
        return " ".join(parts)

    def drop_since(self, mark: Mark) -> None:
        del self.finals[mark.finals:]
        self.interim = ""

    def clear(self) -> None:
        self.finals.clear()
        self.interim = ""

    async def wait_final(self, after_seq: int, timeout_s: float) -> bool:
        """Wait until a final beyond `after_seq` has arrived; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.seq <= after_seq:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):  # cancellable, unlike 3.11's wait_for
                    await self._arrived.wait()
            except TimeoutError:
                return False
        return True
