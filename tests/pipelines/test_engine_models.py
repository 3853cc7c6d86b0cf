"""EngineModels: load once, hand out per-call VAD streams and endpointing policies."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.engine_models import EngineModels
from pipelines.inference import ExecutorClosedError
from pipelines.settings import TurnSettings, VadSettings
from pipelines.vad.silero import SileroVadStream
from pipelines.vad.webrtc import WebRtcVadStream
from tests.speech import frames, synthesize, with_silence


async def test_one_load_serves_many_calls(models_dir: Path) -> None:
    engine = EngineModels.load(models_dir, threads=2, max_batch=64, max_wait_ms=2)
    try:
        silero_a = engine.vad_stream(VadSettings())
        silero_b = engine.vad_stream(VadSettings(threshold=0.6))
        assert isinstance(silero_a, SileroVadStream) and isinstance(silero_b, SileroVadStream)
        assert isinstance(engine.vad_stream(VadSettings(engine="webrtc")), WebRtcVadStream)

        speech = with_silence(synthesize("What time do you open tomorrow?"), 300, 400)
        kinds = []
        for frame in frames(speech):
            ev = await silero_a.process(frame)
            if ev is not None and ev.kind in ("start", "stop"):
                kinds.append(ev.kind)
        assert kinds == ["start", "stop"]

        decision = await engine.endpointing(TurnSettings()).decide(lambda: speech, 200)
        assert decision.trigger == "model"
        assert {ex.name for ex in engine.executors} == {"silero_vad", "smart_turn"}
        assert all(ex.stats.completed > 0 for ex in engine.executors)
    finally:
        await engine.aclose()
    with pytest.raises(ExecutorClosedError):
        await silero_b.process(speech[:512])


def test_missing_model_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"silero_vad\.onnx"):
        EngineModels.load(tmp_path)
