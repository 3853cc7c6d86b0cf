"""Agent speeches as the conversation queues and plays them.

A speech is one thing the agent says: the greeting, an answer to a caller's turn (several LLM
rounds when tools are called), a `say()`, an idle prompt, the apology, the goodbye. Speeches play
one at a time. The `SpeechHandle` is what the host gets back: awaitable until the speech has been
played (or was interrupted, cancelled or failed) and cancellable.

Each speech keeps its context messages as *parts* (one per LLM round) so that, when the caller
barges in, every message can be truncated to what the caller actually heard.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from pipelines.context import ChatContext, ChatItem
from pipelines.speech_output import SpeechOutput

# "play": audio the host hands over as it is (a recording), not the agent's own words.
SpeechKind = Literal["say", "play", "greeting", "reply", "idle", "apology", "goodbye"]

# Stop reasons that mean "the caller (or the API) cut the agent off": they count as interrupted
# and emit agent.speech_interrupted. Others (watchdog, shutdown) are reported differently.
INTERRUPTIONS = frozenset({"barge_in", "interrupt", "dtmf", "cancelled", "hangup"})


@dataclass(eq=False, slots=True)
class TurnTiming:
    """One committed caller turn and the timings of the answer to it (loop clock, seconds)."""

    id: str
    user_text: str
    trigger: str
    speech_end_at: float  # the true end of the caller's speech (or the DTMF commit)
    eou_at: float
    final_at: float
    llm_request_at: float | None = None
    llm_first_at: float | None = None
    first_sentence_at: float | None = None
    # The answer was started before the turn ended (preemptive generation).
    preemptive: bool = False


@dataclass(eq=False, slots=True)
class SpeechPart:
    """One assistant message of a speech (an LLM round); `item` is its context entry."""

    index: int
    item: ChatItem | None = None
    # False for words spoken into an answer on the host's behalf (a tool's hold line): the
    # caller hears them but they are not the model's message, so they never enter the context.
    in_context: bool = True


class SpeechHandle:
    """A queued or playing agent speech. `await handle` waits until it has been played (or was
    interrupted, cancelled or failed); `handle.cancel()` stops it."""

    _ids = itertools.count(1)

    def __init__(
        self,
        kind: SpeechKind,
        *,
        on_cancel: Callable[[SpeechHandle], None],
        text: str | None = None,
        audio: np.ndarray | None = None,
        sample_rate: int = 16000,
        interruptible: bool = True,
        add_to_context: bool = True,
        turn: TurnTiming | None = None,
    ) -> None:
        self.id = f"sp{next(self._ids)}"
        self.kind = kind
        self.interruptible = interruptible
        self.add_to_context = add_to_context
        self.turn = turn
        self.source_text = (text or "").strip()  # say()/prompt text (replies: generated)
        self.audio = audio
        self.sample_rate = sample_rate
        self._on_cancel = on_cancel
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.output: SpeechOutput | None = None
        self.task: asyncio.Task[None] | None = None
        self.parts: list[SpeechPart] = []
        self.stop_reason: str | None = None
        self.stopped: asyncio.Future[None] | None = None  # set once a stop's bookkeeping is done
        self.error: str | None = None  # the failing stage
        self.barge_in_ms: float | None = None
        self.heard_text = ""
        # Watchdog bookkeeping: waiting on a tool is not a stall; the clock restarts after it.
        self.in_tools = False
        self.watch_from = 0.0
        # An answer generated ahead of the end of the turn: it neither plays nor runs tools
        # until released (None: not held back).
        self.release: asyncio.Event | None = None
        # Set once a held answer has gone as far as it can before its release (its first audio
        # is ready, or its tools wait for the turn to end, or it failed).
        self.held_ready = asyncio.Event()

    async def released(self) -> None:
        if self.release is not None:
            self.held_ready.set()
            await self.release.wait()

    @property
    def text(self) -> str:
        """Everything this speech said or was going to say (sentences as spoken)."""
        if self.output is not None and self.output.segments:
            return self.output.text()
        return self.source_text

    @property
    def interrupted(self) -> bool:
        return self.stop_reason in INTERRUPTIONS

    def done(self) -> bool:
        return self._done.done()

    def cancel(self) -> None:
        self._on_cancel(self)

    def __await__(self) -> Any:
        return self.wait().__await__()

    async def wait(self) -> None:
        # Shielded: a caller that stops waiting must not cancel the speech itself.
        await asyncio.shield(self._done)

    def new_part(self) -> SpeechPart:
        part = SpeechPart(len(self.parts))
        self.parts.append(part)
        return part

    def resolve(self) -> None:
        if not self._done.done():
            self._done.set_result(None)

    def account_heard(self, context: ChatContext, *, assume_written_plays: bool = False) -> None:
        """Truncate this speech's context messages to what the caller heard and remember it.

        `assume_written_plays`: audio already handed to the sink counts as heard (the speech
        stopped producing without clearing playout, e.g. after a provider error)."""
        out = self.output
        if out is None:
            return
        for part in self.parts:
            if not part.in_context:
                continue
            heard = out.heard_text(part.index, assume_written_plays=assume_written_plays)
            if part.item is not None:
                if heard != out.text(part.index):
                    context.truncate_to_heard(part.item, heard)
            elif heard and (self.add_to_context or self.kind == "reply"):
                # The round was cut before its message was recorded: record what was heard.
                part.item = context.add_assistant(heard, interrupted=True)
        self.heard_text = out.heard_text(assume_written_plays=assume_written_plays)

    def __repr__(self) -> str:
        return f"<SpeechHandle {self.id} {self.kind} stop={self.stop_reason}>"


def turn_metrics(turn: TurnTiming, out: SpeechOutput | None) -> dict[str, Any]:
    """The turn.metrics fields (ms; None where a stage did not happen).

    Everything is measured from the true end of the caller's speech. `server_added_ms` is the
    first agent audio minus the time spent waiting on providers (STT final, LLM until the first
    sentence, TTS first byte): end-of-turn detection plus the engine's own overhead."""
    base = turn.speech_end_at
    tts_ttfb = _ms(out.tts_request_at, out.tts_first_chunk_at) if out else None
    first_audio = _ms(base, out.first_audio_at) if out else None
    # How long the end of the turn waited for the final (0 when it was in before).
    stt_wait = _ms(turn.eou_at, max(turn.eou_at, turn.final_at))
    llm_wait = _ms(turn.llm_request_at, turn.first_sentence_at)
    server_added = None
    if turn.preemptive:
        # The providers worked while the caller was still (maybe) talking: only what they
        # still owed once the turn was decided is theirs (the commit may then wait for them);
        # the rest is the turn-taking wait and ours.
        if first_audio is not None and out is not None and out.tts_first_chunk_at is not None:
            owed = max(0.0, (out.tts_first_chunk_at - turn.eou_at) * 1000.0)
            server_added = round(first_audio - owed, 1)
    elif first_audio is not None and stt_wait is not None and llm_wait is not None \
            and tts_ttfb is not None:
        server_added = round(first_audio - stt_wait - llm_wait - tts_ttfb, 1)
    return {
        "vad_stop_to_eou_ms": _ms(base, turn.eou_at),
        "eou_to_stt_final_ms": stt_wait,
        "llm_ttft_ms": _ms(turn.llm_request_at, turn.llm_first_at),
        "tts_ttfb_ms": tts_ttfb,
        "first_audio_out_ms": first_audio,
        "played_ack_ms": _ms(base, out.first_played_at) if out else None,
        "server_added_ms": server_added,
        "preemptive": turn.preemptive,
        # When each stage began and ended, from the end of the caller's speech (a preemptive
        # answer's LLM request comes before the end of the turn): enough to draw the turn.
        "stt_final_at_ms": _ms(base, turn.final_at),
        "llm_request_at_ms": _ms(base, turn.llm_request_at),
        "llm_first_token_at_ms": _ms(base, turn.llm_first_at),
        "tts_request_at_ms": _ms(base, out.tts_request_at) if out else None,
        "tts_first_byte_at_ms": _ms(base, out.tts_first_chunk_at) if out else None,
    }


def _ms(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start) * 1000.0, 1)
