"""`phonebooth doctor`: check the embedded offline stack on this machine, and say what is wrong.

Each check exercises the real engine the way a call does: the VAD and end-of-turn models load
and run once, llama.cpp generates one token in a worker process (a llama.cpp built for another
CPU dies there, not in the doctor), Piper speaks a sentence, the default local STT transcribes
it. Each check prints one line, `ok` or `FAIL` with the reason and what to do; the exit status
is 1 when any check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.agent_config import DEFAULT_PROVIDERS
from app.cli_base import SubParsers, settings_from_args
from providers.base import ProviderContext, ProviderError, SecretRef

SENTENCE = "Hello, thanks for calling."
FIX_LOCAL = "install the embedded engines: pip install \".[local]\""


@dataclass
class Result:
    name: str
    ok: bool
    detail: str


class CheckFailed(Exception):
    """A check's failure, in words a user can act on."""


async def _no_secret(ref: SecretRef) -> str:
    raise CheckFailed("the embedded engines need no credentials")


def _ctx(models_dir: Path, shared: dict[str, Any]) -> ProviderContext:
    return ProviderContext(resolve_secret=_no_secret, models_dir=str(models_dir), shared=shared)


def _missing_module(exc: ImportError) -> CheckFailed:
    return CheckFailed(f"{exc.name or exc} is not installed ({FIX_LOCAL})")


async def check_models(models_dir: Path, shared: dict[str, Any]) -> str:
    from app import model_store

    problems = []
    # What `phonebooth models fetch` fetches by default (optional models are fetched by name).
    for m in model_store.DEFAULT_MODELS:
        if not (models_dir / m.name).is_file():
            problems.append(f"{m.name} is missing")
        elif not model_store.is_intact(models_dir, m):
            problems.append(f"{m.name} is damaged (sha256 differs)")
    if problems:
        raise CheckFailed(f"in {models_dir}: {'; '.join(problems)} "
                          "(run `phonebooth models fetch`)")
    return f"{len(model_store.DEFAULT_MODELS)} files in {models_dir}, sha256 ok"


async def check_vad_turn(models_dir: Path, shared: dict[str, Any]) -> str:
    from pipelines.engine_models import EngineModels

    try:
        models = await asyncio.to_thread(EngineModels.load, models_dir, threads=1)
    except FileNotFoundError as exc:
        raise CheckFailed(f"{exc} (run `phonebooth models fetch`)") from None
    try:
        silence = np.zeros(16000, dtype=np.int16)
        await asyncio.wait_for(models.smart_turn.predict(silence), 30)
    finally:
        await models.aclose()
    return "Silero VAD and smart-turn loaded; the end-of-turn model ran"


async def check_llm(models_dir: Path, shared: dict[str, Any]) -> str:
    try:
        import llama_cpp
    except ImportError as exc:
        raise _missing_module(exc) from None
    from providers.base import TextDelta
    from providers.llm.llama_cpp import LlamaCppConfig, LlamaCppLLM

    llm = LlamaCppLLM(LlamaCppConfig.model_validate({"max_concurrent": 1}),
                      _ctx(models_dir, shared))
    started = time.perf_counter()
    tokens = 0
    async for event in llm.stream([{"role": "user", "content": "Say hello."}],
                                  settings={"max_tokens": 1, "temperature": 0.0}):
        tokens += isinstance(event, TextDelta)
    took = time.perf_counter() - started
    if tokens == 0:
        raise CheckFailed(f"{llm.model_name} answered with no token")
    slot = llm._last_slot
    pid = slot.worker.pid if slot is not None else None
    features = _cpu_features(llama_cpp)
    return (f"{llm.model_name}: one token in {took:.1f} s (model load included) in worker "
            f"pid {pid}; llama.cpp {getattr(llama_cpp, '__version__', '?')} built for {features}")


def _cpu_features(llama_cpp: Any) -> str:
    """The instruction sets this llama.cpp build uses (from its own system info line)."""
    try:
        info = llama_cpp.llama_print_system_info().decode(errors="replace")
    except Exception:
        return "an unknown CPU feature set"
    parts = [p.split(":")[-1].strip() for p in info.split("|")]  # "CPU : SSE3 = 1", "AVX = 1"
    on = [p.split("=")[0].strip() for p in parts if p.replace(" ", "").endswith("=1")]
    return ", ".join(dict.fromkeys(on)) or "no optional CPU features"


async def _speak(models_dir: Path, shared: dict[str, Any]) -> tuple[np.ndarray, int]:
    try:
        from providers.tts.piper import PiperTTS, PiperTTSConfig
    except ImportError as exc:
        raise _missing_module(exc) from None
    tts = PiperTTS(PiperTTSConfig.model_validate({"noise_scale": 0.0, "noise_w_scale": 0.0}),
                   _ctx(models_dir, shared))
    chunks = [c.samples async for c in tts.synthesize(SENTENCE)]
    if not chunks:
        raise CheckFailed("Piper produced no audio")
    return np.concatenate(chunks), tts.sample_rate


async def check_tts(models_dir: Path, shared: dict[str, Any]) -> str:
    started = time.perf_counter()
    audio, rate = await _speak(models_dir, shared)
    shared["doctor_speech"] = (audio, rate)
    seconds = len(audio) / rate
    return (f"spoke {SENTENCE!r}: {seconds:.1f} s of audio at {rate} Hz in "
            f"{time.perf_counter() - started:.1f} s (voice load included)")


async def check_stt(models_dir: Path, shared: dict[str, Any]) -> str:
    """The default local speech-to-text (what a new agent uses) transcribes Piper's sentence."""
    from pipelines.audio.resample import resample
    from providers import registry
    from providers.base import STTProvider

    name = DEFAULT_PROVIDERS["stt"]
    try:
        cls = registry.get("stt", name)
    except ImportError as exc:
        raise _missing_module(exc) from None
    audio, rate = shared.get("doctor_speech") or await _speak(models_dir, shared)
    pcm = resample(audio, rate, 16000)
    pad = np.zeros(3200, dtype=np.int16)
    pcm = np.concatenate([pad, pcm, pad])
    stt = cls(cls.Config.model_validate({}), _ctx(models_dir, shared))
    if not isinstance(stt, STTProvider):
        raise CheckFailed(f"provider {name!r} is not a speech-to-text provider")
    stream = await stt.open(16000, "en-US")
    try:
        for i in range(0, len(pcm) - 319, 320):
            await stream.push(pcm[i:i + 320])
        await stream.flush()
        final = await asyncio.wait_for(anext(t async for t in stream.events() if t.is_final), 30)
    finally:
        await stream.aclose()
    if not final.text.strip():
        raise CheckFailed(f"{name} heard nothing in Piper's sentence")
    return f"{name} transcribed Piper's sentence as {final.text!r}"


Check = Callable[[Path, dict[str, Any]], Awaitable[str]]
CHECKS: list[tuple[str, Check]] = [
    ("model files", check_models),
    ("VAD / end of turn", check_vad_turn),
    ("LLM (llama.cpp)", check_llm),
    ("TTS (Piper)", check_tts),
    (f"STT ({DEFAULT_PROVIDERS['stt']})", check_stt),
]


async def run_checks(models_dir: Path, report: Callable[[Result], None]) -> list[Result]:
    from providers.native.pool import close_pools

    shared: dict[str, Any] = {}
    results = []
    try:
        for name, check in CHECKS:
            try:
                result = Result(name, True, await check(models_dir, shared))
            except CheckFailed as exc:
                result = Result(name, False, str(exc))
            except ProviderError as exc:
                result = Result(name, False, exc.message)
            except ImportError as exc:
                result = Result(name, False, str(_missing_module(exc)))
            except Exception as exc:
                result = Result(name, False, f"{type(exc).__name__}: {exc}")
            report(result)
            results.append(result)
    finally:
        await asyncio.to_thread(close_pools, shared)
    return results


def _doctor(args: argparse.Namespace) -> int:
    models_dir = Path(args.models_dir).expanduser() if args.models_dir \
        else settings_from_args(args).models_dir

    def report(r: Result) -> None:
        print(f"{'ok  ' if r.ok else 'FAIL'}  {r.name}: {r.detail}", flush=True)

    results = asyncio.run(run_checks(models_dir, report))
    failed = [r.name for r in results if not r.ok]
    if failed:
        print(f"{len(failed)} of {len(results)} checks failed: {', '.join(failed)}")
        return 1
    print(f"all {len(results)} checks passed: the embedded stack works on this machine")
    return 0


def register(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("doctor", parents=[common], help="check the embedded offline engines",
                       description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--models-dir", help="model files to check (default: models.dir)")
    p.set_defaults(func=_doctor)
