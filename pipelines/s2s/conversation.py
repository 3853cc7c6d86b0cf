"""`S2SConversation`: a call driven by a speech-to-speech model session.

The caller's 16 kHz frames are resampled to the model's input rate and streamed to it; the
model's audio goes out through the same paced playout as the cascaded pipeline (one playout
segment per model item, so checkpoints tell how much of each reply was heard). Turn-taking is
the vendor's server VAD, or with `turn_taking` (turn_detection: phonebooth) the cascaded
pipeline's own VAD stream and end-of-turn policy, which tell the model when the caller starts
(`activity_start`, cutting a reply in progress with `cancel_response`) and when their turn is
over (`activity_end`: the model answers). Either way, when the caller starts over a reply,
playout is cleared and the model is told where its reply was cut (`truncate` at the heard ms),
so its memory matches what the caller heard. With a `tts` (the agent's `output: text`) the model
writes instead of speaking and `TextVoice` speaks its text through the cascade's speech output;
a barge-in then stops the TTS and the model is told the heard text (`keep_heard_text`).
Function calls go to the call's tool executor and
the results back to the model. It records the same events as the cascaded engine: user/agent
speech and transcripts, turns with heard text, usage and per-turn latency (the end of the
caller's turn → first model audio out).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pipelines import events as ev
from pipelines.audio.resample import StreamResampler
from pipelines.ports import PlayoutSink, TTSLike
from pipelines.s2s.spoken_text import TextReply, TextVoice
from pipelines.s2s.turn_taking import CallerListener, TurnTaking
from pipelines.speech_output import text_prefix
from pipelines.turn.base import EndOfTurnDecision
from pipelines.vad.base import VadEvent

log = logging.getLogger(__name__)

FRAME_RATE = 16000
ToolExecutor = Callable[[Any], Awaitable[Any]]


class S2SSessionLike(Protocol):
    """A live model session (providers/s2s/base.py implements it). `events()` yields objects
    with a `kind`: audio (.item_id .samples), output_transcript (.item_id .text),
    input_transcript (.text), speech_started, speech_stopped, interrupted, tool_call (.id .name
    .arguments), usage (.provider .model .metric .quantity), response_done (.status)."""

    async def send_audio(self, samples: np.ndarray) -> None: ...
    def events(self) -> Any: ...
    async def send_tool_result(self, call: Any, output: str) -> None: ...
    async def truncate(self, item_id: str, audio_end_ms: int) -> None: ...
    async def keep_heard_text(self, item_id: str, heard: str) -> None: ...
    async def respond(self, instructions: str) -> None: ...
    async def activity_start(self) -> None: ...
    async def activity_end(self) -> None: ...
    async def cancel_response(self) -> None: ...
    async def aclose(self) -> None: ...


@dataclass
class _Reply:
    """One model item being played: its playout segment and what it says."""

    item_id: str
    segment_id: str
    text: list[str] = field(default_factory=list)
    ended: bool = False

    @property
    def said(self) -> str:
        return "".join(self.text).strip()


class S2SConversation:
    def __init__(
        self,
        session: S2SSessionLike,
        *,
        input_rate: int,
        output_rate: int,
        sink: PlayoutSink,
        on_event: Callable[[ev.Event], None],
        tool_executor: ToolExecutor | None = None,
        greeting: str | None = None,
        provider: str = "s2s",
        turn_taking: TurnTaking | None = None,
        tts: TTSLike | None = None,
        voice: str | None = None,
    ) -> None:
        self._session = session
        self._output_rate = output_rate
        self._sink = sink
        self._emit = on_event
        self._execute = tool_executor
        self._greeting = greeting
        self._provider = provider
        self._to_model = StreamResampler(FRAME_RATE, input_rate)
        self._reply: _Reply | None = None
        self._user_text = ""
        self._speech_stopped_at: float | None = None
        self._turn_id = uuid.uuid4().hex[:12]
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ended: asyncio.Future[str] | None = None
        self._suspended = 0
        self._written_ms: dict[str, float] = {}
        self._cut_items: set[str] = set()
        self._texts: dict[str, list[str]] = {}  # model item id -> transcript deltas
        # Phonebooth turn-taking (None: the vendor's server VAD decides).
        self._turns = None if turn_taking is None else CallerListener(
            turn_taking, self._vad_failed)
        self._eou_task: asyncio.Task[Any] | None = None
        self._decision: EndOfTurnDecision | None = None  # the last end of turn, for its record
        self._eou_ms: float | None = None  # VAD stop -> end-of-turn decision, for turn.metrics
        # A reply was asked for and its response.done has not come: a barge-in cancels it.
        self._responding = False
        # output: text: the model's text spoken by the agent's TTS (None: the model speaks).
        self._text = None if tts is None else TextVoice(
            sink, tts, voice=voice, on_started=self._text_started,
            on_played=self._text_played, on_error=self._tts_failed)

    # -- the surface the call host drives ------------------------------------------------------
    async def start(self) -> None:
        self._ended = asyncio.get_running_loop().create_future()
        self._spawn(self._event_loop(), "s2s-events")
        if self._greeting:
            self._responding = True
            await self._session.respond(f"Greet the caller by saying: {self._greeting}")

    async def push_audio(self, frame: np.ndarray) -> None:
        if self.ended:
            return
        pcm = self._to_model.process(frame)
        if len(pcm):
            try:
                await self._session.send_audio(pcm)
            except Exception as exc:
                self._fail(exc)
                return
        if self._turns is not None:
            # After the send: the end of a turn is only told once its audio is with the model.
            await self._listen(frame)

    def on_dtmf(self, digit: str) -> None:
        self._emit(ev.UserDtmf(digit=digit))

    async def say(self, text: str, *, interruptible: bool = True) -> None:
        self._responding = True
        await self._session.respond(f"Say exactly this to the caller: {text}")

    def inject(self, text: str) -> None:
        self._responding = True
        self._spawn(self._session.respond(text), "s2s-inject")

    @contextlib.contextmanager
    def turns_suspended(self) -> Iterator[None]:
        # The model's server VAD cannot be paused, and in phonebooth mode the model still
        # answers each turn; barge-in handling is what is suspended.
        self._suspended += 1
        try:
            yield
        finally:
            self._suspended -= 1

    def hangup(self, reason: str = "agent_hangup") -> None:
        self._spawn(self._hangup_after_playout(reason), "s2s-hangup")

    async def stop(self, reason: str = "stopped") -> None:
        self._end(reason)

    async def wait_ended(self) -> str:
        assert self._ended is not None, "start() first"
        try:
            return await asyncio.shield(self._ended)
        finally:
            await self._close()

    @property
    def ended(self) -> bool:
        return self._ended is not None and self._ended.done()

    # -- internals -----------------------------------------------------------------------------
    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _end(self, reason: str) -> None:
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(reason)

    def _fail(self, exc: BaseException, stage: str = "s2s") -> None:
        if self.ended:
            return
        log.warning("s2s call failed (%s): %s", stage, exc)
        self._emit(ev.SessionError(code="provider_error", message=str(exc)[:300], stage=stage))
        self._end("error")

    def _tts_failed(self, exc: BaseException) -> None:
        # The model's text cannot be spoken (the tts block's fallbacks failed too).
        self._fail(exc, "tts")

    async def _close(self) -> None:
        for t in list(self._tasks):
            if t is not asyncio.current_task():
                t.cancel()
        with contextlib.suppress(Exception):
            await self._session.aclose()
        if self._turns is not None:
            with contextlib.suppress(Exception):
                await self._turns.aclose()
        if self._text is not None:
            await self._text.aclose()

    async def _hangup_after_playout(self, reason: str) -> None:
        reply = self._reply
        with contextlib.suppress(Exception):
            if reply is not None:
                await asyncio.wait_for(self._sink.wait_played(reply.segment_id), 30)
            if self._text is not None:
                await asyncio.wait_for(self._text.wait_played(), 30)
        self._end(reason)

    async def _event_loop(self) -> None:
        try:
            async for e in self._session.events():
                await self._on_event(e)
            self._end("provider_closed")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(exc)

    async def _on_event(self, e: Any) -> None:
        kind = e.kind
        if kind == "audio":
            await self._on_audio(e.item_id, e.samples)
        elif kind == "output_transcript":
            # A transcript delta may come before the item's first audio.
            if e.item_id not in self._cut_items:
                self._texts.setdefault(e.item_id, []).append(e.text)
        elif kind == "output_text":
            if self._text is not None and e.item_id not in self._cut_items:
                await self._text.add(e.item_id, e.text)
        elif kind == "text_done":
            if self._text is not None:
                await self._text.finish(e.item_id)
        elif kind == "speech_started":
            if self._turns is not None:
                return  # Phonebooth's VAD decides (the vendor's is off; a stray event is not)
            self._emit(ev.UserSpeechStarted())
            if not self._suspended:
                await self._barge_in(truncate=True)
        elif kind == "interrupted":
            await self._barge_in(truncate=False)
        elif kind == "speech_stopped":
            if self._turns is not None:
                return
            self._speech_stopped_at = time.monotonic()
            self._emit(ev.UserSpeechStopped())
        elif kind == "input_transcript":
            self._user_text = e.text
            decision, self._decision = self._decision, None
            self._emit(ev.UserTranscription(text=e.text, is_final=True))
            self._emit(ev.UserTurnCompleted(
                turn_id=self._turn_id, text=e.text,
                trigger=decision.trigger if decision is not None else "vad",
                eou_probability=decision.probability if decision is not None else None))
        elif kind == "tool_call":
            self._spawn(self._run_tool(e), f"s2s-tool-{e.id}")
        elif kind == "usage":
            self._emit(ev.SessionUsage(provider=e.provider, model=e.model, kind="s2s",
                                       metric=e.metric, quantity=e.quantity))
        elif kind == "response_done":
            await self._response_done()

    def _speech_started(self, segment_id: str, tts_ttfb_ms: float | None = None) -> None:
        self._emit(ev.AgentSpeechStarted(segment_id=segment_id))
        if self._speech_stopped_at is not None:
            ms = (time.monotonic() - self._speech_stopped_at) * 1000
            self._emit(ev.TurnMetrics(turn_id=self._turn_id, first_audio_out_ms=ms,
                                      vad_stop_to_eou_ms=self._eou_ms,
                                      tts_ttfb_ms=tts_ttfb_ms))
            self._speech_stopped_at = None
            self._eou_ms = None

    def _text_started(self, reply: TextReply) -> None:
        out = reply.output
        ttfb = (None if out.tts_request_at is None or out.tts_first_chunk_at is None
                else (out.tts_first_chunk_at - out.tts_request_at) * 1000)
        self._speech_started(reply.id, ttfb)

    def _text_played(self, reply: TextReply) -> None:
        self._emit(ev.AgentSpeechCompleted(segment_id=reply.id, text=reply.said))
        self._turn_done(reply.said, reply.said, interrupted=False)

    async def _on_audio(self, item_id: str, samples: np.ndarray) -> None:
        if item_id in self._cut_items:
            return
        reply = self._reply
        if reply is None or reply.item_id != item_id or reply.ended:
            reply = self._reply = _Reply(item_id, f"s2s-{item_id}-{uuid.uuid4().hex[:6]}",
                                         self._texts.setdefault(item_id, []))
            await self._sink.start_segment(reply.segment_id)
            self._speech_started(reply.segment_id)
        await self._sink.write(samples, self._output_rate)
        self._written_ms[reply.segment_id] = (self._written_ms.get(reply.segment_id, 0.0)
                                              + len(samples) * 1000 / self._output_rate)

    async def _response_done(self) -> None:
        self._responding = False
        if self._text is not None:
            await self._text.finish()
        reply = self._reply
        if reply is None or reply.ended:
            return
        reply.ended = True
        await self._sink.end_segment()
        self._spawn(self._complete_when_played(reply), "s2s-played")

    async def _complete_when_played(self, reply: _Reply) -> None:
        await self._sink.wait_played(reply.segment_id)
        if self._reply is not reply:
            return  # cut by a barge-in, which recorded the turn
        self._written_ms.pop(reply.segment_id, None)
        self._texts.pop(reply.item_id, None)
        self._emit(ev.AgentSpeechCompleted(segment_id=reply.segment_id, text=reply.said))
        self._turn_done(reply.said, reply.said, interrupted=False)
        self._reply = None

    async def _barge_in(self, *, truncate: bool) -> None:
        await self._cut_audio(truncate=truncate)
        if self._text is not None and self._text.speaking:
            await self._cut_text(self._text, truncate=truncate)

    async def _cut_text(self, voice: TextVoice, *, truncate: bool) -> None:
        for cut in await voice.cut():
            self._cut_items.add(cut.item_id)
            if truncate:
                try:
                    await self._session.keep_heard_text(cut.item_id, cut.heard)
                except Exception as exc:
                    self._fail(exc)
            self._emit(ev.AgentSpeechInterrupted(segment_id=cut.id, heard_text=cut.heard,
                                                 interrupted_text=cut.said))
            self._turn_done(cut.said, cut.heard, interrupted=True)

    async def _cut_audio(self, *, truncate: bool) -> None:
        reply = self._reply
        if reply is None:
            return
        self._reply = None
        # Deltas of the cut item still in flight must not start a new segment.
        self._cut_items.add(reply.item_id)
        await self._sink.clear()
        heard_ms = self._sink.played_ms(reply.segment_id)
        sent_ms = self._written_ms.pop(reply.segment_id, 0.0)
        said = reply.said
        self._texts.pop(reply.item_id, None)
        heard = text_prefix(said, heard_ms / sent_ms if sent_ms else 0.0)
        if truncate:
            try:
                await self._session.truncate(reply.item_id, int(min(heard_ms, sent_ms)))
            except Exception as exc:
                self._fail(exc)
        self._emit(ev.AgentSpeechInterrupted(segment_id=reply.segment_id, heard_text=heard,
                                             interrupted_text=said))
        self._turn_done(said, heard, interrupted=True)

    def _turn_done(self, said: str, heard: str, *, interrupted: bool) -> None:
        self._emit(ev.TurnCompleted(turn_id=self._turn_id, user_text=self._user_text,
                                    agent_text=said, heard_text=heard, interrupted=interrupted))
        self._turn_id = uuid.uuid4().hex[:12]
        self._user_text = ""

    async def _run_tool(self, call: Any) -> None:
        if self._execute is None:
            result: Any = {"error": f"no tool named '{call.name}'"}
        else:
            result = await self._execute(call)
        output = result if isinstance(result, str) else json.dumps(result, default=str)
        try:
            self._responding = True  # the model goes on with its reply
            await self._session.send_tool_result(call, output)
        except Exception as exc:
            self._fail(exc)

    # -- Phonebooth turn-taking (turn_detection: phonebooth) -----------------------------------
    async def _listen(self, frame: np.ndarray) -> None:
        assert self._turns is not None
        event = await self._turns.hear(frame)
        if event is None:
            return
        if event.kind == "start":
            await self._caller_started(event)
        elif event.kind == "stop":
            self._caller_stopped(event)

    def _vad_failed(self, exc: BaseException) -> None:
        self._emit(ev.SessionError(code=type(exc).__name__, message=str(exc)[:300],
                                   stage="vad"))

    async def _caller_started(self, e: VadEvent) -> None:
        if self._eou_task is not None and not self._eou_task.done():
            self._eou_task.cancel()  # the caller carries on: that pause did not end the turn
        self._eou_task = None
        self._emit(ev.UserSpeechStarted())
        try:
            await self._session.activity_start()
            if self._suspended:
                return
            if self._responding:
                # Stop the model generating what nobody will hear; the heard part is kept
                # by the truncate below.
                self._responding = False
                await self._session.cancel_response()
        except Exception as exc:
            self._fail(exc)
            return
        await self._barge_in(truncate=True)

    def _caller_stopped(self, e: VadEvent) -> None:
        assert self._turns is not None
        self._emit(ev.UserSpeechStopped(speech_ms=e.speech_ms))
        silence_ms = self._turns.silence_after(e)
        self._eou_task = self._spawn(self._end_of_turn(silence_ms), "s2s-end-of-turn")

    async def _end_of_turn(self, silence_ms: float) -> None:
        assert self._turns is not None
        decision = await self._turns.decide(silence_ms)
        # Past the decision the turn is the model's: the commit/reply request is not cut in
        # half by a resumed caller.
        self._decision = decision
        self._eou_ms = decision.decided_after_ms
        self._speech_stopped_at = time.monotonic()
        self._responding = True
        await asyncio.shield(self._hand_over())

    async def _hand_over(self) -> None:
        try:
            await self._session.activity_end()
        except Exception as exc:
            self._fail(exc)
