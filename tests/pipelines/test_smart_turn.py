"""smart-turn v3 on Piper speech: complete questions vs trailing, unfinished sentences."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipelines.turn.smart_turn import SmartTurnModel
from tests.speech import synthesize, with_silence

COMPLETE = [
    "What time do you open tomorrow?",
    "I'd like to book a table for two at seven.",
]
INCOMPLETE = [
    "I wanted to ask about, um, and then I",
    "So I was thinking that maybe we could",
    "My account number is, uh,",
]


@pytest.fixture(scope="module")
def smart_turn(models_dir: Path) -> Iterator[SmartTurnModel]:
    model = SmartTurnModel(models_dir / "smart-turn-v3.2-cpu.onnx", max_batch=8, max_wait_ms=5)
    yield model
    asyncio.run(model.aclose())


def at_vad_stop(text: str) -> np.ndarray:
    """What the policy sees at VAD stop: a little lead-in, the utterance, 200 ms of silence."""
    return with_silence(synthesize(text), lead_ms=300, trail_ms=200)


def test_model_signature(smart_turn: SmartTurnModel) -> None:
    (inp,) = smart_turn._session.get_inputs()
    (out,) = smart_turn._session.get_outputs()
    assert (inp.name, inp.shape[1:], inp.type) == ("input_features", [80, 800], "tensor(float)")
    assert (out.name, out.shape[1:]) == ("logits", [1])


@pytest.mark.parametrize("text", COMPLETE)
async def test_finished_question_is_complete(smart_turn: SmartTurnModel, text: str) -> None:
    p = await smart_turn.predict(at_vad_stop(text))
    assert p >= 0.5, f"P(complete)={p:.3f} for {text!r}"


@pytest.mark.parametrize("text", INCOMPLETE)
async def test_trailing_sentence_is_incomplete(smart_turn: SmartTurnModel, text: str) -> None:
    p = await smart_turn.predict(at_vad_stop(text))
    assert p < 0.5, f"P(complete)={p:.3f} for {text!r}"


async def test_concurrent_queries_are_batched_and_equal_to_single_runs(
    smart_turn: SmartTurnModel,
) -> None:
    audios = [at_vad_stop(t) for t in COMPLETE + INCOMPLETE]
    alone = [smart_turn.run_batch([a])[0] for a in audios]
    batches_before = smart_turn.executor.stats.batches
    together = await asyncio.gather(*(smart_turn.predict(a) for a in audios))
    assert smart_turn.executor.stats.batches - batches_before == 1
    np.testing.assert_allclose(together, alone, atol=1e-4)
    # The exported graph ends in a sigmoid: outputs are probabilities, not raw logits.
    noise = (np.random.default_rng(5).standard_normal(48000) * 4000).astype(np.int16)
    for p in [*together, await smart_turn.predict(noise), await smart_turn.predict(noise[:0])]:
        assert 0.0 <= p <= 1.0


async def test_only_the_last_8_seconds_count(smart_turn: SmartTurnModel) -> None:
    question = at_vad_stop("What time do you open tomorrow?")
    chatter = synthesize("So I was thinking that maybe we could")
    long_turn = np.concatenate([chatter] * 6 + [question])
    assert len(long_turn) > 8 * 16000
    p_long = await smart_turn.predict(long_turn)
    p_tail = await smart_turn.predict(long_turn[-8 * 16000 :])
    assert p_long == pytest.approx(p_tail, abs=1e-6)


async def test_bad_input_fails_alone(smart_turn: SmartTurnModel) -> None:
    good = at_vad_stop("What time do you open tomorrow?")
    bad = np.zeros((2, 100), np.int16)
    results = await asyncio.gather(
        smart_turn.predict(good), smart_turn.predict(bad), return_exceptions=True
    )
    assert isinstance(results[1], ValueError)
    assert isinstance(results[0], float) and results[0] >= 0.5
