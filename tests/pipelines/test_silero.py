"""Silero VAD on real Piper speech: model I/O, batched == alone, edge timing, robustness."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipelines.inference import BatchExecutor
from pipelines.settings import VadSettings
from pipelines.vad.base import VadEvent
from pipelines.vad.silero import CONTEXT, WINDOW, SileroModel, SileroRequest, SileroVadStream
from tests.speech import frames, speech_bounds_ms, synthesize, with_silence


@pytest.fixture(scope="module")
def silero(models_dir: Path) -> Iterator[SileroModel]:
    model = SileroModel(models_dir / "silero_vad.onnx", max_batch=128, max_wait_ms=2)
    yield model
    asyncio.run(model.aclose())


def unbatched(model: SileroModel) -> BatchExecutor:
    """One ONNX run per window: the per-stream baseline."""
    return BatchExecutor(model.run_batch, max_batch=1, max_wait_ms=0, name="silero_alone")


async def run_stream(
    stream: SileroVadStream, audio: np.ndarray, frame_samples: int = 320
) -> tuple[list[tuple[VadEvent, float]], list[float]]:
    """Feed audio; returns (event, ms of audio fed when it was emitted) and probabilities."""
    events: list[tuple[VadEvent, float]] = []
    probs: list[float] = []
    fed = 0
    for frame in frames(audio, frame_samples):
        fed += len(frame)
        ev = await stream.process(frame)
        probs.append(stream.probability)
        if ev is not None:
            events.append((ev, fed / 16))
    return events, probs


def edges(events: list[tuple[VadEvent, float]]) -> list[tuple[VadEvent, float]]:
    """Starts and stops (quiet, pause and resume events go between them)."""
    return [(e, t) for e, t in events if e.kind in ("start", "stop")]


def test_model_io_is_what_the_stream_feeds(silero: SileroModel) -> None:
    inputs = {i.name: i for i in silero._session.get_inputs()}
    outputs = [o.name for o in silero._session.get_outputs()]
    assert inputs["input"].type == "tensor(float)" and len(inputs["input"].shape) == 2
    assert inputs["state"].shape[0] == 2 and inputs["state"].shape[2] == 128
    assert inputs["sr"].type == "tensor(int64)" and inputs["sr"].shape == []
    assert outputs == ["output", "stateN"]


def test_batched_rows_equal_single_runs(silero: SileroModel) -> None:
    rng = np.random.default_rng(7)
    # Streams with 1-3 windows each: a stream's windows run in order on its own state.
    reqs = [
        SileroRequest(
            (rng.standard_normal((1 + i % 3, CONTEXT + WINDOW)) * 0.2).astype(np.float32),
            (rng.standard_normal((2, 128)) * 0.3).astype(np.float32),
        )
        for i in range(9)
    ]
    batched = silero.run_batch(reqs)
    for req, got in zip(reqs, batched, strict=True):
        state = req.state
        for k, window in enumerate(req.windows):
            (alone,) = silero.run_batch([SileroRequest(window[None, :], state)])
            assert got.probabilities[k] == pytest.approx(alone.probabilities[0], abs=1e-6)
            state = alone.state
        np.testing.assert_allclose(got.state, state, atol=1e-6)


async def test_frames_together_decide_like_frames_one_at_a_time(silero: SileroModel) -> None:
    audio = with_silence(synthesize("What time do you open tomorrow?"), lead_ms=500,
                         trail_ms=900)
    settings = VadSettings()
    reference, ref_probs = await run_stream(SileroVadStream(silero, settings), audio)
    stream = SileroVadStream(silero, settings)
    requests_before = silero.executor.stats.requests
    got: list[tuple[str, float, float]] = []
    all_frames = list(frames(audio))
    fed = 0
    for i in range(0, len(all_frames), 7):  # a call 140 ms behind, catching up
        chunk = all_frames[i:i + 7]
        out = await stream.process_frames(chunk)
        assert len(out) == len(chunk)
        for frame, ev in zip(chunk, out, strict=True):
            fed += len(frame)
            if ev is not None:
                got.append((ev.kind, ev.at_ms, fed / 16))
    assert got == [(e.kind, e.at_ms, t) for e, t in reference]
    assert stream.probability == pytest.approx(ref_probs[-1], abs=1e-5)
    # One round trip per chunk, not one per window.
    assert silero.executor.stats.requests - requests_before <= -(-len(all_frames) // 7)

@pytest.fixture(scope="module")
def utterances() -> list[np.ndarray]:
    texts = [
        "What time do you open tomorrow?",
        "I would like to cancel my order please.",
        "Hello there.",
        "Can you send someone to fix the heating in my apartment?",
    ]
    # Different lead silences so the streams' speech edges fall in different windows.
    return [
        with_silence(synthesize(t), lead_ms=300 + 170 * i, trail_ms=900)
        for i, t in enumerate(texts)
    ]


async def test_batched_streams_decide_exactly_like_streams_alone(
    silero: SileroModel, utterances: list[np.ndarray]
) -> None:
    settings = VadSettings()
    n = max(len(u) for u in utterances)
    audios = [np.concatenate([u, np.zeros(n - len(u), np.int16)]) for u in utterances]

    alone_ex = unbatched(silero)
    try:
        alone = [
            await run_stream(SileroVadStream(silero, settings, executor=alone_ex), a)
            for a in audios
        ]
    finally:
        await alone_ex.aclose()
    assert alone_ex.stats.batch_size.max == 1

    # All calls in lockstep through the shared executor: every window step is one batched run.
    streams = [SileroVadStream(silero, settings) for _ in audios]
    per_stream = [list(frames(a)) for a in audios]
    batches_before = silero.executor.stats.batches
    events: list[list[tuple[VadEvent, float]]] = [[] for _ in audios]
    probs: list[list[float]] = [[] for _ in audios]
    for i in range(len(per_stream[0])):
        out = await asyncio.gather(
            *(s.process(f[i]) for s, f in zip(streams, per_stream, strict=True))
        )
        for k, ev in enumerate(out):
            probs[k].append(streams[k].probability)
            if ev is not None:
                events[k].append((ev, (i + 1) * 20.0))
    runs = silero.executor.stats.batches - batches_before
    windows = n // WINDOW
    assert runs <= windows + 1, "windows of concurrent streams were not batched together"

    for k in range(len(audios)):
        alone_events, alone_probs = alone[k]
        assert [(e.kind, e.at_ms, t) for e, t in events[k]] == [
            (e.kind, e.at_ms, t) for e, t in alone_events
        ]
        np.testing.assert_allclose(probs[k], alone_probs, atol=1e-5)
        assert [e.kind for e, _ in edges(alone_events)] == ["start", "stop"]


async def test_edges_are_backdated_to_the_true_speech_bounds(silero: SileroModel) -> None:
    settings = VadSettings(start_ms=200, stop_ms=300)
    speech = synthesize("What time do you open tomorrow?")
    audio = with_silence(speech, lead_ms=600, trail_ms=1200)
    true_start, true_end = speech_bounds_ms(audio)
    events, _ = await run_stream(SileroVadStream(silero, settings), audio)
    kinds = [e.kind for e, _ in edges(events)]
    assert kinds == ["start", "stop"], events
    (start, start_emitted), (stop, stop_emitted) = edges(events)
    # Halfway to the stop, a pause with the stop's edge.
    pause, pause_emitted = events[-2]
    assert pause.kind == "pause" and pause.at_ms == stop.at_ms
    assert pause_emitted < stop_emitted
    # Edges land within about one 32 ms window (+ the model's reaction) of the real ones.
    assert abs(start.at_ms - true_start) <= 100
    assert abs(stop.at_ms - true_end) <= 150
    # Emitted once the hysteresis is satisfied: start_ms / stop_ms after the edge (+1 window
    # granularity, +1 frame because a window completes inside a frame).
    assert settings.start_ms <= start_emitted - start.at_ms <= settings.start_ms + 32 + 20
    assert settings.stop_ms <= stop_emitted - stop.at_ms <= settings.stop_ms + 32 + 20
    assert stop.speech_ms == pytest.approx(stop.at_ms - start.at_ms)


async def test_silence_and_low_noise_never_start_speech(silero: SileroModel) -> None:
    rng = np.random.default_rng(3)
    noise = (rng.standard_normal(16000 * 2) * 60).astype(np.int16)  # ~ -55 dBFS hiss
    audio = np.concatenate([np.zeros(16000, np.int16), noise])
    stream = SileroVadStream(silero, VadSettings())
    events, probs = await run_stream(stream, audio)
    assert events == []
    assert max(probs) < 0.5
    assert stream.speaking is False


async def test_large_frames_queue_extra_events(silero: SileroModel) -> None:
    audio = with_silence(synthesize("Hello there."), lead_ms=400, trail_ms=800)
    settings = VadSettings()
    small, _ = await run_stream(SileroVadStream(silero, settings), audio, 320)
    stream = SileroVadStream(silero, settings)
    big: list[VadEvent] = []
    # One call with the whole utterance: both events are produced, one is returned per call.
    first = await stream.process(audio)
    assert first is not None
    big.append(first)
    while (ev := await stream.process(np.zeros(0, np.int16))) is not None:
        big.append(ev)
    assert [(e.kind, e.at_ms) for e in big] == [(e.kind, e.at_ms) for e, _ in small]


async def test_cancelled_process_loses_nothing(silero: SileroModel) -> None:
    audio = with_silence(synthesize("Hello there."), lead_ms=400, trail_ms=800)
    settings = VadSettings()
    reference, _ = await run_stream(SileroVadStream(silero, settings), audio)

    slow = BatchExecutor(silero.run_batch, max_batch=64, max_wait_ms=30, name="slow")
    try:
        stream = SileroVadStream(silero, settings, executor=slow)
        got: list[tuple[str, float]] = []
        cancelled = 0
        for i, frame in enumerate(frames(audio)):
            task = asyncio.create_task(stream.process(frame))
            if i % 7 == 3:
                await asyncio.sleep(0)  # let it queue its window, then abandon the call
                task.cancel()
                try:
                    ev = await task
                except asyncio.CancelledError:
                    cancelled += 1
                    continue
            else:
                ev = await task
            if ev is not None:
                got.append((ev.kind, ev.at_ms))
        while (ev := await stream.process(np.zeros(0, np.int16))) is not None:
            got.append((ev.kind, ev.at_ms))
        assert cancelled > 0
        assert got == [(e.kind, e.at_ms) for e, _ in reference]
    finally:
        await slow.aclose()


async def test_reset_forgets_speech_but_keeps_the_clock(silero: SileroModel) -> None:
    settings = VadSettings()
    speech = synthesize("Hello there.")
    stream = SileroVadStream(silero, settings)
    started = None
    for frame in frames(with_silence(speech, lead_ms=200)):
        ev = await stream.process(frame)
        started = started or ev
    assert started is not None and stream.speaking
    fed_ms = len(with_silence(speech, lead_ms=200)) // 320 * 20 + 20
    stream.reset()
    assert not stream.speaking and stream.probability == 0.0
    events, _ = await run_stream(stream, with_silence(speech, lead_ms=500, trail_ms=600))
    assert [e.kind for e, _ in edges(events)] == ["start", "stop"]
    assert events[0][0].at_ms > fed_ms + 400  # times continue from before the reset


async def test_bad_frames_get_clear_errors(silero: SileroModel) -> None:
    stream = SileroVadStream(silero, VadSettings())
    with pytest.raises(ValueError, match="int16"):
        await stream.process(np.zeros(320, np.float32))
    with pytest.raises(ValueError, match="mono"):
        await stream.process(np.zeros((2, 320), np.int16))
    with pytest.raises(TypeError):
        await stream.process(b"\x00" * 640)  # type: ignore[arg-type]
    # The stream is still usable afterwards.
    assert await stream.process(np.zeros(320, np.int16)) is None
    await stream.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await stream.process(np.zeros(320, np.int16))
