"""`TextVoice`: a speech-to-speech model's text replies spoken by the agent's own TTS.

With `output: text` (hybrid mode) the model writes its reply and the cascaded pipeline's speech
output plays it: the text is cut into sentences as it streams in (the first may end at a clause
break, as in the cascade), each sentence is synthesised while the previous one plays, one
playout segment per sentence, so checkpoints tell how much was heard. One `SpeechOutput` per
model item; items play one after the other (a reply written after a tool call waits for the one
before it). A barge-in stops every reply at once and reports, per reply, what it said and what
the caller heard of it (the heard share of each sentence, cut back to a word).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pipelines.ports import PlayoutSink, TTSLike
from pipelines.sentences import SentenceSegmenter, clean_for_speech
from pipelines.speech_output import Segment, SpeechOutput

log = logging.getLogger(__name__)

# As in the cascade (pipelines/reply.py): a reply's first words may go to TTS at a clause break.
FIRST_CLAUSE_CHARS = 4


@dataclass(eq=False)
class TextReply:
    """One model item being spoken."""

    item_id: str
    id: str  # the agent.speech_* events' segment_id
    output: SpeechOutput
    segmenter: SentenceSegmenter
    text: list[str] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    closed: bool = False
    cut: bool = False

    @property
    def said(self) -> str:
        return clean_for_speech("".join(self.text))


@dataclass(frozen=True)
class CutReply:
    item_id: str
    id: str
    said: str
    heard: str


class TextVoice:
    """Speaks text replies into `sink` with `tts`. `on_started(reply_id)` fires at a reply's
    first audio, `on_played(reply)` once it has all been heard, `on_error(exc)` when the TTS
    fails (the reply is then dropped)."""

    _ids = itertools.count(1)

    def __init__(self, sink: PlayoutSink, tts: TTSLike, *, voice: str | None,
                 on_started: Callable[[TextReply], None],
                 on_played: Callable[[TextReply], None],
                 on_error: Callable[[BaseException], None]) -> None:
        self._sink = sink
        self._tts = tts
        self._voice = voice
        self._on_started = on_started
        self._on_played = on_played
        self._on_error = on_error
        self._gate = asyncio.Event()
        self._gate.set()  # never held: a barge-in stops a text reply for good
        self._replies: dict[str, TextReply] = {}  # item id -> reply not yet played or cut
        self._last: asyncio.Task[None] | None = None

    def _segment_id(self) -> str:
        return f"s2s-text-{next(self._ids)}"

    def _reply(self, item_id: str) -> TextReply:
        known = self._replies.get(item_id)
        if known is not None:
            return known

        def started(seg: Segment) -> None:
            if seg is reply.output.segments[0]:
                self._on_started(reply)

        output = SpeechOutput(self._sink, self._tts, gate=self._gate,
                              next_segment_id=self._segment_id, voice=self._voice,
                              on_segment_started=started)
        reply = TextReply(item_id, f"s2s-{item_id}-{next(self._ids)}", output,
                          SentenceSegmenter(first_clause_chars=FIRST_CLAUSE_CHARS))
        reply.task = self._last = asyncio.ensure_future(self._play(reply, self._last))
        self._replies[item_id] = reply
        return reply

    async def add(self, item_id: str, delta: str) -> None:
        """A text delta of `item_id`: its completed sentences go to the TTS."""
        reply = self._reply(item_id)
        if reply.closed:
            return
        reply.text.append(delta)
        for sentence in reply.segmenter.push(delta):
            await reply.output.add_text(clean_for_speech(sentence))

    async def finish(self, item_id: str | None = None) -> None:
        """The item's text is complete (None: every open reply, at the response's end)."""
        for reply in list(self._replies.values()):
            if reply.closed or (item_id is not None and reply.item_id != item_id):
                continue
            reply.closed = True
            for sentence in reply.segmenter.flush():
                await reply.output.add_text(clean_for_speech(sentence))
            await reply.output.close()

    async def _play(self, reply: TextReply, before: asyncio.Task[None] | None) -> None:
        if before is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(before)
        if reply.cut:
            return
        try:
            await reply.output.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._replies.pop(reply.item_id, None)
            self._on_error(exc)
            return
        if not reply.cut:
            self._replies.pop(reply.item_id, None)
            self._on_played(reply)

    @property
    def speaking(self) -> bool:
        return bool(self._replies)

    async def cut(self) -> list[CutReply]:
        """Barge-in: stop the TTS and playout of every reply; what each said and was heard."""
        replies = list(self._replies.values())
        self._replies.clear()
        if not replies:
            return []
        # Hold the writers first, so nothing reaches the sink between its clear and their end.
        self._gate.clear()
        try:
            for reply in replies:
                reply.cut = True
                reply.output.freeze()
            with contextlib.suppress(Exception):
                await replies[0].output.stop_audio()  # one clear of the shared sink
            out: list[CutReply] = []
            for reply in replies:
                heard = reply.output.heard_text()
                if reply.task is not None:
                    reply.task.cancel()
                out.append(CutReply(reply.item_id, reply.id, reply.said, heard))
            await asyncio.gather(*(r.task for r in replies if r.task is not None),
                                 return_exceptions=True)
        finally:
            self._gate.set()
        return out

    async def wait_played(self) -> None:
        """Until the last reply has been played (or cut)."""
        if self._last is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._last)

    async def aclose(self) -> None:
        for reply in self._replies.values():
            reply.cut = True
            if reply.task is not None:
                reply.task.cancel()
        self._replies.clear()
