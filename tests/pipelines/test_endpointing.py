"""Endpointing policy with the real smart-turn model on Piper speech."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipelines.settings import TurnSettings
from pipelines.turn.delay import silence_budget_ms
from pipelines.turn.endpointing import EndpointingPolicy
from pipelines.turn.smart_turn import SmartTurnModel
from tests.speech import silence, synthesize, with_silence

STOP_MS = 200  # the VAD's stop_ms: silence already heard when decide() is called


@pytest.fixture(scope="module")
def smart_turn(models_dir: Path) -> Iterator[SmartTurnModel]:
    model = SmartTurnModel(models_dir / "smart-turn-v3.2-cpu.onnx")
    yield model
    asyncio.run(model.aclose())


class GrowingTurn:
    """The conversation's view of the user turn: the speech, then silence that keeps growing in
    real time while the policy waits (what get_audio returns at each check)."""

    def __init__(self, *speech: np.ndarray) -> None:
        self.speech = list(speech)  # call i returns speech[min(i, last)] + silence so far
        self.t0 = time.monotonic()
        self.lengths: list[int] = []
        self.checked = asyncio.Event()

    def __call__(self) -> np.ndarray:
        i = min(len(self.lengths), len(self.speech) - 1)
        waited_ms = (time.monotonic() - self.t0) * 1000.0
        audio = np.concatenate([self.speech[i], silence(STOP_MS + waited_ms)])
        self.lengths.append(len(audio))
        self.checked.set()
        return audio


def turn(text: str) -> np.ndarray:
    return with_silence(synthesize(text), lead_ms=300)


async def test_complete_question_ends_on_the_first_check(smart_turn: SmartTurnModel) -> None:
    settings = TurnSettings(recheck_ms=500, max_wait_ms=3000)
    audio = GrowingTurn(turn("What time do you open tomorrow?"))
    decision = await EndpointingPolicy(smart_turn, settings).decide(audio, STOP_MS)
    assert decision.trigger == "model"
    assert decision.probability is not None and decision.probability >= 0.5
    # One model run, no waiting: the turn ends at stop_ms + model time.
    assert len(audio.lengths) == 1
    assert decision.decided_after_ms > 0


async def test_unfinished_sentence_waits_rechecking_until_max_wait(
    smart_turn: SmartTurnModel,
) -> None:
    settings = TurnSettings(recheck_ms=300, max_wait_ms=1500)
    audio = GrowingTurn(turn("I wanted to ask about, um, and then I"))
    t0 = time.monotonic()
    decision = await EndpointingPolicy(smart_turn, settings).decide(audio, STOP_MS)
    waited_ms = (time.monotonic() - t0) * 1000
    assert decision.trigger == "timeout"
    assert decision.probability is not None and decision.probability < 0.5
    # Ends the silence budget the last P sets after the true end of speech, i.e. that minus
    # stop_ms after the VAD stop.
    budget = silence_budget_ms(decision.probability, "", settings)
    assert settings.min_wait_ms < budget <= settings.max_wait_ms
    assert decision.decided_after_ms >= budget - STOP_MS - 1
    assert decision.decided_after_ms <= waited_ms + 1
    # Re-checked as the silence grew (first check + one per recheck_ms: ~5 on an idle box).
    assert len(audio.lengths) >= 2
    assert audio.lengths == sorted(audio.lengths) and audio.lengths[-1] > audio.lengths[0]


async def test_recheck_ends_the_turn_once_the_model_is_confident(
    smart_turn: SmartTurnModel,
) -> None:
    settings = TurnSettings(recheck_ms=100, max_wait_ms=5000)
    # The first check sees an unfinished sentence; later checks a finished question.
    audio = GrowingTurn(
        turn("So I was thinking that maybe we could"), turn("What time do you open tomorrow?")
    )
    decision = await EndpointingPolicy(smart_turn, settings).decide(audio, STOP_MS)
    assert decision.trigger == "model"
    assert len(audio.lengths) == 2
    assert decision.decided_after_ms >= settings.recheck_ms


async def test_vad_detector_or_no_model_ends_immediately(smart_turn: SmartTurnModel) -> None:
    audio = GrowingTurn(turn("I wanted to ask about, um, and then I"))
    for policy in (
        EndpointingPolicy(smart_turn, TurnSettings(detector="vad")),
        EndpointingPolicy(None, TurnSettings()),
    ):
        decision = await policy.decide(audio, STOP_MS)
        assert decision.trigger == "vad" and decision.probability is None
    assert audio.lengths == []  # the model never ran


async def test_silence_already_past_max_wait_ends_without_the_model(
    smart_turn: SmartTurnModel,
) -> None:
    audio = GrowingTurn(turn("I wanted to ask about, um, and then I"))
    policy = EndpointingPolicy(smart_turn, TurnSettings(max_wait_ms=300))
    decision = await policy.decide(audio, silence_ms_at_start=400)
    assert decision.trigger == "timeout"
    assert audio.lengths == []


async def test_caller_cancels_when_speech_resumes(smart_turn: SmartTurnModel) -> None:
    settings = TurnSettings(recheck_ms=200, max_wait_ms=5000)
    audio = GrowingTurn(turn("I wanted to ask about, um, and then I"))
    task = asyncio.create_task(EndpointingPolicy(smart_turn, settings).decide(audio, STOP_MS))
    await asyncio.wait_for(audio.checked.wait(), 10)
    await asyncio.sleep(0.05)  # inside the re-check wait
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The model is still healthy for the next turn.
    assert await smart_turn.predict(turn("What time do you open tomorrow?")) >= 0.5


class GatedModel:
    """An end-of-turn model whose answer the test releases."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.answer: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def predict(self, audio: np.ndarray) -> float:
        self.asked.set()
        return await self.answer


async def test_cancel_landing_as_the_model_answers_still_cancels() -> None:
    """Speech resumes in the very loop step the model answers: the decision must not survive
    (Python 3.11's asyncio.wait_for returned the answer and dropped the cancel)."""
    model = GatedModel()
    task = asyncio.create_task(EndpointingPolicy(model, TurnSettings(max_wait_ms=5000))
                               .decide(lambda: silence(500), STOP_MS))
    await asyncio.wait_for(model.asked.wait(), 5)
    model.answer.set_result(0.1)  # unfinished: the policy would wait on and re-check
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_broken_model_falls_back_to_the_vad_decision(models_dir: Path) -> None:
    model = SmartTurnModel(models_dir / "smart-turn-v3.2-cpu.onnx")
    await model.aclose()  # every predict now fails
    audio = GrowingTurn(turn("What time do you open tomorrow?"))
    decision = await EndpointingPolicy(model, TurnSettings()).decide(audio, STOP_MS)
    assert decision.trigger == "vad"
