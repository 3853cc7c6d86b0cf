"""The conversation with the real turn-taking models: batched Silero VAD + smart-turn v3 on
synthesised (Piper) caller speech. STT/LLM/TTS stay scripted; this runs in real time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines import events as ev
from pipelines.conversation import Conversation
from pipelines.engine_models import EngineModels
from pipelines.settings import ConversationSettings
from pipelines.vad.segmenter import ONSET_MS
from tests.pipelines.fakes import FakeLLM, FakePlayoutSink, FakeSTT, FakeTTS
from tests.speech import frames, silence, synthesize

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(models_dir: Path) -> Iterator[EngineModels]:
    models = EngineModels.load(models_dir, threads=1)
    yield models
    asyncio.run(models.aclose())


class RealtimeCaller:
    """Sends 20 ms frames on a real-time schedule: queued audio, else silence."""

    def __init__(self, conv: Conversation) -> None:
        self.conv = conv
        self._frames: list[np.ndarray] = []
        self._zero = np.zeros(320, dtype=np.int16)
        self._drained = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def say(self, audio: np.ndarray) -> None:
        self._frames.extend(frames(audio))
        self._drained.clear()
        await self._drained.wait()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        i = 0
        while True:
            i += 1
            delay = t0 + i * 0.02 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._frames:
                await self.conv.push_audio(self._frames.pop(0))
                if not self._frames:
                    self._drained.set()
            else:
                await self.conv.push_audio(self._zero)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class Call:
    def __init__(self, engine: EngineModels, settings: ConversationSettings, stt: FakeSTT,
                 llm: FakeLLM, greeting: str | None = None) -> None:
        self.events: list[ev.Event] = []
        self._arrived = asyncio.Event()
        self.sink = FakePlayoutSink()
        self.conv = Conversation(
            settings, prompt="You are helpful.", greeting=greeting,
            vad=engine.vad_stream(settings.vad), endpointing=engine.endpointing(settings.turn),
            stt=stt, llm=llm, tts=FakeTTS(), sink=self.sink, on_event=self._on_event,
        )
        self.caller = RealtimeCaller(self.conv)

    def _on_event(self, e: ev.Event) -> None:
        self.events.append(e)
        self._arrived.set()

    def of(self, type_: str) -> list[Any]:
        return [e for e in self.events if e.type == type_]

    async def wait_for(self, type_: str, count: int = 1, within: float = 30.0) -> Any:
        async def find() -> Any:
            while len(self.of(type_)) < count:
                self._arrived.clear()
                await self._arrived.wait()
            return self.of(type_)[count - 1]

        return await asyncio.wait_for(find(), within)

    async def __aenter__(self) -> Call:
        await self.conv.start()
        self.caller.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.conv.stop("test_done")
        await self.caller.stop()
        await self.sink.aclose()


async def test_complete_question_is_ended_by_the_model_on_its_first_check(
    engine: EngineModels,
) -> None:
    s = ConversationSettings()
    question = "What time do you open tomorrow?"
    stt = FakeSTT([question], streaming=False, latency_ms=20)
    async with Call(engine, s, stt, FakeLLM([["We open at nine."]])) as call:
        await asyncio.sleep(0.3)
        await call.caller.say(synthesize(question))
        turn = await call.wait_for("user.turn_completed")
        assert turn.text == question
        # Decided by smart-turn ("complete") right at VAD stop, not by waiting for max_wait.
        assert turn.trigger == "model" and turn.eou_probability >= s.turn.threshold
        metrics = await call.wait_for("turn.metrics")
        # The VAD's own stop hysteresis is part of the measured wait (from the true edge).
        assert metrics.vad_stop_to_eou_ms >= s.vad.stop_ms
        assert len(call.of("user.speech_started")) == 1
        done = await call.wait_for("turn.completed")
        assert done.heard_text == "We open at nine."


async def test_unfinished_sentence_with_a_400ms_pause_stays_one_turn(
    engine: EngineModels,
) -> None:
    s = ConversationSettings()
    first, second = "I wanted to ask about, um, and then I", "what time do you open tomorrow?"
    stt = FakeSTT([f"{first} {second}"], streaming=False, latency_ms=20)
    async with Call(engine, s, stt, FakeLLM([["Nine o'clock."]])) as call:
        await asyncio.sleep(0.3)
        audio = np.concatenate([synthesize(first), silence(400), synthesize(second)])
        await call.caller.say(audio)
        turn = await call.wait_for("user.turn_completed")
        await call.wait_for("turn.completed")
        await asyncio.sleep(0.5)
        # The pause produced a VAD stop, the model judged the fragment unfinished, the caller
        # went on, and only one turn was committed.
        timeline = [(round(e.mono, 2), e.type, e.payload()) for e in call.events]
        assert len(call.of("user.speech_stopped")) >= 2, timeline
        assert len(call.of("user.turn_completed")) == 1, timeline
        assert turn.text == f"{first} {second}"
        # The whole turn is an odd sentence: smart-turn may end it or let max_wait do it.
        assert turn.trigger in ("model", "timeout")


async def test_real_speech_over_the_agent_interrupts_it(engine: EngineModels) -> None:
    s = ConversationSettings()
    greeting = ("Thanks for calling. We are open from nine in the morning until ten at night, "
                "every single day of the week, including holidays.")
    stt = FakeSTT(["stop, wait a second"], streaming=True, word_ms=150, latency_ms=40)
    async with Call(engine, s, stt, FakeLLM([["Sure."]]), greeting=greeting) as call:
        await call.wait_for("agent.speech_started")
        await asyncio.sleep(1.0)
        await call.caller.say(synthesize("Stop, wait a second."))
        intr = await call.wait_for("agent.speech_interrupted")
        assert intr.heard_text and greeting.startswith(intr.heard_text)
        assert len(intr.heard_text) < len(greeting)
        # Silent from the hold (the VAD's onset); committed only after min_speech_ms and a word.
        assert intr.barge_in_ms >= ONSET_MS
        onset = call.of("user.speech_started")[0].mono
        assert (intr.mono - onset) * 1000 >= s.interruption.min_speech_ms - 20  # ±1 frame
        # One clear made the hold audible (a later one may stop the answer to this very turn
        # if the caller goes on after their pause).
        assert len([c for c in call.sink.clears if c[0] <= intr.mono]) == 1
        turn = await call.wait_for("user.turn_completed")
        assert turn.text == "stop, wait a second"
        assert call.conv.context.items[0].content == intr.heard_text
