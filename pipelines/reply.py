"""Generating one answer: LLM rounds streamed into speech, tool calls in between.

Each round streams the context to the LLM; text deltas are cut into sentences and queued on the
speech output as they complete (so the first sentence is already playing while the model writes
the rest); tool calls are collected, run through the host's executor (concurrently, each bounded
by `tool_timeout_s`), and the assistant message with its calls plus one result per call go into
the context as a unit before the next round. The last allowed round offers no tools, so the
model has to answer in words.

Cancellation (a barge-in) can land anywhere: mid-stream, mid-tool. Running tools are cancelled
with the answer, and the context still receives a result for every call it recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pipelines import events as ev
from pipelines.context import ChatContext, ToolCallRecord
from pipelines.ports import LLMLike, PrefillingLLM, ReportsToolEvents, UsageLike
from pipelines.sentences import SentenceSegmenter
from pipelines.speech import SpeechHandle, SpeechPart
from pipelines.speech_output import SpeechError, SpeechOutput, aclose_stream

ToolExecutor = Callable[[Any], Awaitable[Any]]
# The first piece of an answer may end at a clause break once it is this long ("Sure, ...",
# "We are open Monday to Friday, ..."): TTS starts a sentence's worth of tokens sooner.
FIRST_CLAUSE_CHARS = 4
Emit = Callable[..., None]  # emit(EventClass, **fields)
PREFILL_GREETING_WAIT_S = 3.0  # the LLM prefill waits this long at most for the greeting's audio

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ReplyUpdate:
    """A live change of what answers are generated with; None leaves a setting as it is."""

    prompt: str | None = None
    tools: list[Any] | None = None  # [] removes every tool
    llm: LLMLike | None = None
    tool_executor: ToolExecutor | None = None

    def merge(self, newer: ReplyUpdate) -> ReplyUpdate:
        """Two updates before the next answer: the newer wins field by field."""
        return ReplyUpdate(
            prompt=newer.prompt if newer.prompt is not None else self.prompt,
            tools=newer.tools if newer.tools is not None else self.tools,
            llm=newer.llm if newer.llm is not None else self.llm,
            tool_executor=newer.tool_executor if newer.tool_executor is not None
            else self.tool_executor,
        )


async def no_tools(call: Any) -> Any:
    """The executor when the host provides none: every call gets an explanatory error."""
    return {"error": f"no tools are available (requested '{getattr(call, 'name', '?')}')"}


class ReplyGenerator:
    def __init__(
        self,
        *,
        llm: LLMLike,
        context: ChatContext,
        emit: Emit,
        clock: Callable[[], float],
        tools: list[Any] | None = None,
        tool_executor: ToolExecutor | None = None,
        max_tool_rounds: int = 5,
        tool_timeout_s: float = 30.0,
        stop_requested: Callable[[], bool] = lambda: False,
    ) -> None:
        self._llm = llm
        self._context = context
        self._emit = emit
        self._clock = clock
        self._tools = tools
        self._execute = tool_executor or no_tools
        self._max_rounds = max_tool_rounds
        self._tool_timeout_s = tool_timeout_s
        # True once the call is ending (e.g. a tool hung up): finish what was said, no more.
        self._stop_requested = stop_requested
        self._pending: ReplyUpdate | None = None

    @property
    def llm(self) -> LLMLike:
        return self._llm

    @property
    def tools(self) -> list[Any] | None:
        return self._tools

    def update(self, change: ReplyUpdate) -> None:
        """Use `change` from the next answer on. An answer being generated keeps its prompt,
        tools and LLM through all its rounds: its tool results and follow-up round belong to
        the request that asked for them."""
        self._pending = change if self._pending is None else self._pending.merge(change)

    def _apply_pending(self) -> None:
        change, self._pending = self._pending, None
        if change is None:
            return
        if change.prompt is not None:
            self._context.system_prompt = change.prompt
        if change.tools is not None:
            self._tools = list(change.tools) or None
        if change.llm is not None:
            self._llm = change.llm
        if change.tool_executor is not None:
            self._execute = change.tool_executor

    async def run(self, speech: SpeechHandle, output: SpeechOutput) -> None:
        """Answer the context's last turn into `output`; returns once it has been played.

        Raises SpeechError("llm" | "tts") on provider failures, including an answer with no
        audio at all (the conversation must never go silent without saying why)."""
        self._apply_pending()
        run = asyncio.create_task(output.run(), name=f"output-{speech.id}")
        try:
            for rnd in range(self._max_rounds + 1):
                if rnd and self._stop_requested():
                    break
                part = speech.new_part()
                tools = self._tools if rnd < self._max_rounds else None
                text, calls = await self._round(speech, output, part, tools, run)
                if run.done():
                    break  # TTS failed; `await run` below raises it
                if not calls:
                    if text:
                        part.item = self._context.add_assistant(text)
                    break
                await self._run_tools(speech, part, text, calls)
            await output.close()
            await run
        finally:
            if not run.done():
                run.cancel()
            await asyncio.gather(run, return_exceptions=True)
        if not output.audio_started and not self._stop_requested():
            if not output.segments:
                raise SpeechError("llm", RuntimeError("the LLM returned no speakable text"))
            raise SpeechError("tts", RuntimeError("TTS returned no audio for the answer"))

    async def _round(self, speech: SpeechHandle, output: SpeechOutput, part: SpeechPart,
                     tools: list[Any] | None, run: asyncio.Task[None]) -> tuple[str, list[Any]]:
        turn = speech.turn
        # The answer's first words may go to TTS at a clause break: the caller waits for them.
        segmenter = SentenceSegmenter(
            first_clause_chars=FIRST_CLAUSE_CHARS if part.index == 0 else 0)
        texts: list[str] = []
        calls: list[Any] = []

        async def speak(sentence: str) -> None:
            if turn is not None and turn.first_sentence_at is None:
                turn.first_sentence_at = self._clock()
            await output.add_text(sentence, part.index)

        if turn is not None and turn.llm_request_at is None:
            turn.llm_request_at = self._clock()
        stream = self._llm.stream(self._context.messages(), tools)
        try:
            async for item in stream:
                kind = getattr(item, "kind", None)
                if kind in ("text", "tool_call") and turn and turn.llm_first_at is None:
                    turn.llm_first_at = self._clock()
                if kind == "text":
                    texts.append(item.text)
                    for sentence in segmenter.push(item.text):
                        await speak(sentence)
                elif kind == "tool_call":
                    calls.append(item)
                elif kind == "usage" and isinstance(item, UsageLike):
                    self._emit(ev.SessionUsage, provider=str(item.provider),
                               model=str(item.model), kind="llm", metric=str(item.metric),
                               quantity=float(item.quantity))
                if run.done():
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise SpeechError("llm", exc) from exc
        finally:
            await aclose_stream(stream)
        for sentence in segmenter.flush():
            await speak(sentence)
        return "".join(texts).strip(), calls

    async def _run_tools(self, speech: SpeechHandle, part: SpeechPart, text: str,
                         calls: list[Any]) -> None:
        # An answer started before the turn ended runs no tool (they act on the world) until
        # the turn is over; if it is thrown away instead, it is cancelled right here.
        await speech.released()
        records = [
            ToolCallRecord(str(c.id), str(c.name), dict(getattr(c, "arguments", None) or {}))
            for c in calls
        ]
        results: dict[str, Any] = {}
        speech.in_tools = True
        try:
            async with asyncio.TaskGroup() as tg:
                for call, rec in zip(calls, records, strict=True):
                    tg.create_task(self._run_tool(call, rec, results))
        except asyncio.CancelledError:
            # Interrupted mid-tool: the context still needs an answer for every call.
            for rec in records:
                results.setdefault(rec.id, {"error": "cancelled: the caller interrupted"})
            part.item = self._context.add_tool_exchange(text, records, results)
            raise
        finally:
            speech.in_tools = False
            speech.watch_from = self._clock()
        part.item = self._context.add_tool_exchange(text, records, results)

    async def _run_tool(self, call: Any, rec: ToolCallRecord, results: dict[str, Any]) -> None:
        execute = self._execute
        reports = isinstance(execute, ReportsToolEvents) and bool(execute.reports_events)

        def emit(event_type: type[ev.Event], **fields: Any) -> None:
            if not reports:
                self._emit(event_type, **fields)

        emit(ev.ToolCalled, call_id=rec.id, name=rec.name, arguments=rec.arguments)
        t0 = self._clock()

        def latency() -> float:
            return round((self._clock() - t0) * 1000.0, 1)

        try:
            # asyncio.timeout: Python 3.11's wait_for would swallow a barge-in's cancel that
            # lands as the tool returns, and the reply would carry on over the caller.
            async with asyncio.timeout(self._tool_timeout_s):
                result = await self._execute(call)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            results[rec.id] = {"error": f"the tool timed out after {self._tool_timeout_s:g}s"}
            emit(ev.ToolFailed, call_id=rec.id, name=rec.name, error="timeout",
                       latency_ms=latency())
            return
        except Exception as exc:
            message = str(exc)[:500] or type(exc).__name__
            results[rec.id] = {"error": message}
            emit(ev.ToolFailed, call_id=rec.id, name=rec.name, error=message,
                       latency_ms=latency())
            return
        results[rec.id] = result
        emit(ev.ToolCompleted, call_id=rec.id, name=rec.name, result=result,
                   latency_ms=latency())


async def prefill(llm: PrefillingLLM, messages: list[dict[str, Any]], tools: list[Any] | None,
                  greeting: str, greeting_audible: asyncio.Event) -> None:
    """Let an LLM that offers `prefill` (a local one with a prompt cache) evaluate the system
    prompt and greeting while the greeting plays and the caller has not spoken yet, so the
    first answer starts as fast as later ones. Only an optimisation: errors are logged, never
    reported as call errors."""
    if greeting:
        # As the greeting will have been recorded by the time the caller's turn is answered.
        messages.append({"role": "assistant", "content": greeting})
        # Not before the greeting is audible: on a small machine the prefill competes for
        # the CPU with the greeting's synthesis, and the greeting plays for seconds anyway.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(greeting_audible.wait(), PREFILL_GREETING_WAIT_S)
    try:
        await llm.prefill(messages, tools)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("LLM prefill failed: %r", exc)
