"""The agent's side: speeches (greeting, answers, `say`, prompts) play one at a time from a
bounded queue, each through its own `SpeechOutput` (sentences → TTS → playout segments) behind
one gate that a barge-in hold closes. Stopping a speech records what the caller heard (the
context is truncated to it); finishing one reports the turn and its metrics."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from pipelines import events as ev
from pipelines.engine.core import EngineCore
from pipelines.engine.states import Trigger
from pipelines.outcomes import ErrorStage
from pipelines.ports import PlayoutSink, TTSLike
from pipelines.reply import ReplyGenerator
from pipelines.sentences import split_sentences
from pipelines.speech import INTERRUPTIONS, SpeechHandle, SpeechKind, turn_metrics
from pipelines.speech_output import SpeechError, SpeechOutput
from pipelines.thinking_audio import ThinkingAudio, custom_clip

if TYPE_CHECKING:
    from pipelines.engine.barge_in import Episode

log = logging.getLogger("pipelines.conversation")

MAX_QUEUED_SPEECHES = 16
SINK_CLEAR_TIMEOUT_S = 2.0  # a transport that never confirms a clear must not hang the call


class SpeechDriver:
    def __init__(self, core: EngineCore, *, sink: PlayoutSink, tts: TTSLike,
                 replies: ReplyGenerator, voice: str | None) -> None:
        self._core = core
        self._sink = sink
        self._tts = tts
        self._replies = replies
        self._voice = voice
        self.gate = asyncio.Event()  # open: speech may flow to the sink; closed: hold
        self.gate.set()
        self.queue: deque[SpeechHandle] = deque()
        self._queue_ready = asyncio.Event()
        self.current: SpeechHandle | None = None
        self._segment_ids = itertools.count(1)
        self._interjections: set[SpeechHandle] = set()
        self._played_waiters: dict[str, asyncio.Future[None]] = {}
        sound = core.settings.thinking_sound
        self._thinking = (ThinkingAudio(sink, clip=custom_clip(sound) if sound else None)
                          if core.settings.thinking_audio else None)
        self.agent_audio = asyncio.Event()  # set once the agent's first audio went out

    def use_voice(self, tts: TTSLike | None, voice: str | None) -> None:
        """Speeches started from now on speak with this TTS and/or voice (one being spoken
        finishes with its own)."""
        if tts is not None:
            self._tts = tts
        if voice is not None:
            self._voice = voice

    @property
    def idle(self) -> bool:
        """Nothing playing and nothing queued. A discarded preemptive answer still winding
        down (its task is cancelled, the loop has not reaped it yet) will never play: without
        this, the answer restarted on a final transcript that corrected it would not start."""
        cur = self.current
        return (cur is None or cur.stop_reason == "discarded") and not self.queue

    def start(self) -> None:
        self._core.core_tasks.add(self._core.spawn(self._loop(), "speech"))

    def new(self, kind: SpeechKind, **kwargs: Any) -> SpeechHandle:
        kwargs.setdefault("interruptible", self._core.settings.interruption.enabled)
        return SpeechHandle(kind, on_cancel=self._cancel_speech, **kwargs)

    def enqueue(self, handle: SpeechHandle, *, front: bool = False) -> None:
        if len(self.queue) >= MAX_QUEUED_SPEECHES:
            raise RuntimeError("too many queued speeches")
        if front:
            self.queue.appendleft(handle)
        else:
            self.queue.append(handle)
        self._created(handle)
        self._core.liveness.cancel_idle()
        self._queue_ready.set()

    def enqueue_closing(self, handle: SpeechHandle) -> None:
        """Queue a last speech: the queue is closed to everyone else once the call ends."""
        self.queue.append(handle)
        self._created(handle)
        self._queue_ready.set()

    def _created(self, handle: SpeechHandle) -> None:
        self._core.emit(ev.AgentSpeechCreated, speech_id=handle.id, source=handle.kind,
                        text=handle.source_text)

    def drop_queued(self, *, interruptible_only: bool) -> None:
        keep: deque[SpeechHandle] = deque()
        for h in self.queue:
            if interruptible_only and not h.interruptible:
                keep.append(h)
            else:
                h.stop_reason = "cancelled"
                h.resolve()
        self.queue = keep

    def forget(self, speech: SpeechHandle) -> None:
        """Drop a speech that was never heard (a discarded preemptive answer)."""
        if speech in self.queue:
            self.queue.remove(speech)
            speech.resolve()
        elif speech.task is not None:
            speech.task.cancel()

    def _cancel_speech(self, handle: SpeechHandle) -> None:
        if handle.done():
            return
        if handle in self.queue:
            self.queue.remove(handle)
            handle.stop_reason = "cancelled"
            handle.resolve()
        elif handle is self.current and handle.stop_reason is None:
            self._core.spawn(self.stop(handle, "cancelled", clear=True), "cancel-speech")

    def stop_for_dtmf(self) -> None:
        cur = self.current
        if cur is not None and cur.interruptible and cur.stop_reason is None:
            self.drop_queued(interruptible_only=True)
            self._core.spawn(self.stop(cur, "dtmf", clear=True), "dtmf-interrupt")

    def interrupt(self, force: bool) -> SpeechHandle | None:
        self.drop_queued(interruptible_only=not force)
        cur = self.current
        if cur is None or cur.done() or cur.stop_reason is not None:
            return None
        if not cur.interruptible and not force:
            return None
        self._core.spawn(self.stop(cur, "interrupt", clear=True), "interrupt")
        return cur

    # -- the loop -----------------------------------------------------------------------------
    async def _loop(self) -> None:
        core = self._core
        while True:
            while not self.queue:
                self._queue_ready.clear()
                await self._queue_ready.wait()
            speech = self.queue.popleft()
            if speech.done():
                continue
            self.current = speech
            speech.watch_from = core.now()
            if speech.kind == "reply":
                if speech.release is None or speech.release.is_set():
                    self._reply_began(speech)
                else:
                    core.spawn(self._when_released(speech), f"release-{speech.id}")
            task = core.spawn(self._run(speech), f"speech-{speech.id}")
            speech.task = task
            await asyncio.wait([task])
            if speech.stopped is not None:
                await asyncio.shield(speech.stopped)  # the stopper's bookkeeping
            if self._thinking is not None:
                await self._thinking.stop()
            self.current = None
            self._finish(speech)
            if not self.queue and not core.ending:
                if not core.barge.active:
                    core.fire(Trigger.LISTEN)
                core.liveness.arm_idle()

    def _reply_began(self, speech: SpeechHandle) -> None:
        speech.watch_from = self._core.now()
        self._core.fire(Trigger.REPLY_STARTED)
        self._core.liveness.watch(speech)
        if self._thinking is not None:
            self._thinking.start()

    async def _when_released(self, speech: SpeechHandle) -> None:
        assert speech.release is not None
        await speech.release.wait()
        if self.current is speech and speech.stop_reason is None and not speech.done():
            self._reply_began(speech)

    async def _run(self, speech: SpeechHandle) -> None:
        async def before_first_audio() -> None:
            await speech.released()  # a preemptive answer plays once the turn has ended
            if self._thinking is not None:
                await self._thinking.stop()

        sid = self._core.session_id
        output = SpeechOutput(
            self._sink, self._tts, gate=self.gate, voice=self._voice,
            next_segment_id=lambda: f"{sid or 'seg'}-{next(self._segment_ids)}",
            on_segment_started=self._on_segment_started,
            on_segment_played=self._on_segment_played,
            before_first_audio=before_first_audio,
            max_sentences=0,  # bounded by the LLM's answer; never block the LLM stream
        )
        speech.output = output
        try:
            if speech.kind == "reply":
                await self._replies.run(speech, output)
            else:
                await self._play_fixed(speech, output)
        except asyncio.CancelledError:
            raise
        except SpeechError as exc:
            await speech.released()  # a failure of an answer never released is moot
            self._core.failures.speech_failed(speech, ErrorStage(exc.stage), exc.cause)
        except Exception as exc:
            log.exception("speech %s failed", speech.id)
            await speech.released()
            self._core.failures.speech_failed(speech, ErrorStage.ENGINE, exc)

    async def _play_fixed(self, speech: SpeechHandle, output: SpeechOutput) -> None:
        part = speech.new_part()
        text = speech.source_text
        if speech.add_to_context and text:
            part.item = self._core.context.add_assistant(text)
        run = asyncio.create_task(output.run(), name=f"output-{speech.id}")
        try:
            if speech.audio is not None:
                await output.add_audio(speech.audio, speech.sample_rate, text, part.index)
            else:
                for sentence in split_sentences(text):
                    await output.add_text(sentence, part.index)
            await output.close()
            await run
        finally:
            if not run.done():
                run.cancel()
            await asyncio.gather(run, return_exceptions=True)

    def _on_segment_started(self, seg: Any) -> None:
        self.agent_audio.set()
        if not self._core.barge.active:
            self._core.fire(Trigger.AUDIO_STARTED)
        self._core.emit(ev.AgentSpeechStarted, segment_id=seg.id, text=seg.text)

    def _on_segment_played(self, seg: Any) -> None:
        self._core.emit(ev.AgentSpeechCompleted, segment_id=seg.id, text=seg.text)
        waiter = self._played_waiters.pop(seg.id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- words said inside an answer that waits on a tool -------------------------------------
    def can_interject(self) -> bool:
        cur = self.current
        return (cur is not None and cur.kind == "reply" and cur.in_tools
                and cur.stop_reason is None and cur.output is not None)

    def interject(self, text: str, interruptible: bool) -> SpeechHandle:
        cur = self.current
        assert cur is not None
        handle = self.new("say", text=text, interruptible=interruptible, add_to_context=False)
        self._interjections.add(handle)
        self._created(handle)
        self._core.spawn(self._play_interjection(cur, handle), f"interject-{handle.id}")
        return handle

    async def _play_interjection(self, cur: SpeechHandle, handle: SpeechHandle) -> None:
        """Speak `handle`'s text inside the answer `cur`; resolve once played or cut off."""
        out = cur.output
        assert out is not None
        was_interruptible = cur.interruptible
        if not handle.interruptible:
            cur.interruptible = False  # e.g. a goodbye: the caller cannot talk over it
        waiters: dict[str, asyncio.Future[None]] = {}
        try:
            part = cur.new_part()
            part.in_context = False
            for sentence in split_sentences(handle.source_text):
                seg = await out.add_text(sentence, part.index)
                if seg is not None:
                    waiters[seg.id] = self._played_waiters[seg.id] = \
                        self._core.require_loop().create_future()
            if waiters:
                played: asyncio.Future[Any] = asyncio.ensure_future(
                    asyncio.gather(*waiters.values()))
                ended: asyncio.Future[Any] = asyncio.ensure_future(cur.wait())
                try:
                    await asyncio.wait([played, ended], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for t in (played, ended):
                        t.cancel()
            if all(w.done() for w in waiters.values()):
                handle.heard_text = handle.source_text
            else:
                handle.stop_reason = cur.stop_reason or "cancelled"
        except RuntimeError:
            # The answer closed its output in the same instant (its tool just finished): the
            # words are moot now; report them as not said.
            handle.stop_reason = "cancelled"
            log.debug("interjection %s arrived after its answer ended", handle.id)
        finally:
            if not handle.interruptible and cur.stop_reason is None:
                cur.interruptible = was_interruptible
            for seg_id in waiters:
                self._played_waiters.pop(seg_id, None)
            self._interjections.discard(handle)
            handle.resolve()

    # -- stopping and finishing ---------------------------------------------------------------
    async def stop(self, speech: SpeechHandle, reason: str, *, clear: bool,
                   barge: Episode | None = None) -> None:
        """Stop a speech: hold, cancel its work, clear playout, then record what the caller
        heard (context truncation) and report it."""
        core = self._core
        if speech.done() or speech.stop_reason is not None:
            return
        speech.stop_reason = reason
        speech.stopped = core.require_loop().create_future()
        try:
            self.gate.clear()
            if speech.task is not None and not speech.task.done():
                speech.task.cancel()
                await asyncio.wait([speech.task])
            out = speech.output
            if barge is not None and barge.cut is not None:
                await asyncio.wait([barge.cut])  # the hold's clear may still be under way
            if clear and out is not None and out.audio_started:
                try:
                    # A no-op when the hold already cleared playout and nothing played since.
                    await asyncio.wait_for(out.stop_audio(), SINK_CLEAR_TIMEOUT_S)
                except Exception as exc:
                    core.emit_error(ErrorStage.TRANSPORT, exc)
            if barge is not None:
                # Onset → the caller stopped hearing the agent (the clear at the hold, if any).
                silenced_at = barge.silenced_at if barge.silenced_at is not None else core.now()
                speech.barge_in_ms = round((silenced_at - barge.onset_at) * 1000.0, 1)
            speech.account_heard(core.context)
            if reason in INTERRUPTIONS:
                heard, full = speech.heard_text, speech.text
                cut = full[len(heard):].strip() if full.startswith(heard) else full
                core.emit(ev.AgentSpeechInterrupted,
                          segment_id=out.current_segment_id() if out else "",
                          heard_text=heard, interrupted_text=cut,
                          barge_in_ms=speech.barge_in_ms or 0.0)
        finally:
            if not core.barge.active:
                self.gate.set()
            speech.stopped.set_result(None)

    def _finish(self, speech: SpeechHandle) -> None:
        if speech.stop_reason == "discarded":
            speech.resolve()  # a preemptive answer the caller never got: no turn to report
            return
        out = speech.output
        if speech.stop_reason is None and speech.error is None and out is not None:
            speech.heard_text = out.text()
        if speech.kind == "reply" and speech.error is None and out is not None \
                and out.audio_started:
            self._core.failures.answered()
        turn = speech.turn
        if turn is not None:
            self._core.emit(ev.TurnCompleted, turn_id=turn.id, user_text=turn.user_text,
                            agent_text=speech.text, heard_text=speech.heard_text,
                            interrupted=speech.interrupted)
            self._core.emit(ev.TurnMetrics, turn_id=turn.id, **turn_metrics(turn, out))
        speech.resolve()

    async def close(self) -> None:
        """Resolve every speech (the call is over)."""
        if self._thinking is not None:
            await self._thinking.stop()
        for h in [*self.queue, *([self.current] if self.current else []),
                  *self._interjections]:
            if h.stop_reason is None:
                h.stop_reason = "shutdown"
            h.resolve()
        self._interjections.clear()
        self._played_waiters.clear()
        self.queue.clear()
        self.current = None


def fixed_speech_budget_s(handle: SpeechHandle) -> float:
    """How long a last speech may take to be heard before the call ends without it."""
    if handle.audio is not None:
        return 10.0 + len(handle.audio) / handle.sample_rate
    return 10.0 + len(handle.source_text) * 0.1

