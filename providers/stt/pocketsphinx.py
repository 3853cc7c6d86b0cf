"""Pocketsphinx STT: offline streaming recognition with the en-US model its wheel ships.

Decoding runs on one worker thread per stream, fed by an inbox the event loop only appends to:
pocketsphinx holds the GIL while it decodes, so the worker hands it 20 ms at a time (each call
blocks the loop for a few ms at most instead of seconds for a long backlog). Interim hypotheses
are emitted every `interim_interval_ms` of new audio; `flush()` ends the utterance and the final
transcript follows. A decoder costs ~90 MB and ~0.3 s to create, so decoders are pooled per
process (in `ctx.shared`) and reused by later streams.

With the bundled model each stream first tells phone audio from wideband audio by its first
~200 ms of loud signal (held back meanwhile, once per stream) and starts the model's cepstral
mean normalisation for that channel (see `phone_band`): without it the first sentences of a
phone call were recognised poorly.

Usage: `audio_seconds` per utterance. Latency: `ttfb_ms` is the time from `flush()` to the final
transcript (what the end of a user's turn waits for).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from pipelines.audio.resample import StreamResampler
from providers.base import (
    ProviderConfig,
    ProviderContext,
    ProviderError,
    STTProvider,
    STTStream,
    Transcript,
)
from providers.stt.phone_band import PHONE_CMN, BandProbe
from providers.usage import TTFB_METRIC, report_metric, report_usage

log = logging.getLogger(__name__)

NAME = "pocketsphinx"
RATE = 16000  # the en-US acoustic model's rate; other input rates are resampled to it
_ENGLISH = {"en", "en-us"}
# Interims the consumer has not read yet beyond this are dropped (finals never are).
_MAX_QUEUED_INTERIMS = 32
# Idle decoders kept per model for reuse; more are freed when streams close.
_MAX_IDLE_DECODERS = 4


def _is_english(language: str) -> bool:
    return language.strip().lower().replace("_", "-") in _ENGLISH


class PocketsphinxConfig(ProviderConfig):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    # None: the agent's language. The bundled model is US English only.
    language: str | None = None
    # Custom model files (relative paths resolve against the models dir). Other languages need
    # at least an acoustic model (`hmm`) plus matching `lm` and `dict`.
    hmm: str | None = None
    lm: str | None = None
    dictionary: str | None = Field(None, alias="dict")
    interim_interval_ms: int = Field(300, ge=0, le=5000, description="0 disables interims")
    # An utterance never flushed is finalised after this much audio (bounds decoder memory).
    max_utterance_s: float = Field(30.0, gt=1.0, le=300.0)
    # Audio waiting to be decoded beyond this is dropped (the machine is overloaded).
    max_backlog_s: float = Field(10.0, gt=0.5, le=120.0)
    # pocketsphinx's flat-lexicon second pass re-decodes the whole utterance at end_utt: it adds
    # 30-100 ms between the end of the user's turn and the final transcript, for transcripts
    # that were identical on our test speech. Off by default (pocketsphinx itself defaults to on).
    second_pass: bool = False

    @model_validator(mode="after")
    def _language_supported(self) -> PocketsphinxConfig:
        if self.language is not None and not _is_english(self.language) and self.hmm is None:
            raise ValueError(
                f"pocketsphinx ships only an en-US model; language '{self.language}' needs "
                "custom model files (hmm, lm, dict)")
        return self


@dataclass(frozen=True, slots=True)
class _Flush:
    requested_at: float


_CLOSE = object()


class _DecoderPool:
    """Idle decoders for one model configuration, created on demand on the calling thread.

    A reused decoder gets its cepstral mean reset: pocketsphinx adapts it to the speaker and
    channel as it decodes, which helps within a call but must not carry over to the next caller.
    """

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self._kwargs = kwargs
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._fresh_cmn: str | None = None

    def acquire(self) -> Any:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        from pocketsphinx import Decoder  # heavy native module: imported only when used

        decoder = Decoder(**self._kwargs)
        if self._fresh_cmn is None:
            self._fresh_cmn = decoder.get_cmn()
        return decoder

    def release(self, decoder: Any) -> None:
        if self._fresh_cmn is not None:
            decoder.set_cmn(self._fresh_cmn)
        with self._lock:
            if len(self._idle) < _MAX_IDLE_DECODERS:
                self._idle.append(decoder)


class PocketsphinxSTT(STTProvider):
    name: ClassVar[str] = NAME
    Config: ClassVar[type[ProviderConfig]] = PocketsphinxConfig
    config: PocketsphinxConfig

    @classmethod
    def model_files(cls, config: ProviderConfig) -> list[str]:
        assert isinstance(config, PocketsphinxConfig)
        # `hmm` is a directory; its model definition file stands for it (checks want files).
        files = [f"{config.hmm.rstrip('/')}/mdef"] if config.hmm else []
        return files + [p for p in (config.lm, config.dictionary) if p]

    @property
    def model_name(self) -> str:
        return "custom" if self.config.hmm else "en-us"

    def _resolve(self, path: str) -> str:
        from pathlib import Path

        p = Path(path).expanduser()
        return str(p if p.is_absolute() else Path(self.ctx.models_dir) / p)

    def _pool(self) -> _DecoderPool:
        kwargs: dict[str, Any] = {"loglevel": "FATAL", "samprate": RATE,
                                  "fwdflat": self.config.second_pass}
        for key, value in (("hmm", self.config.hmm), ("lm", self.config.lm),
                           ("dict", self.config.dictionary)):
            if value:
                kwargs[key] = self._resolve(value)
        pools: dict[tuple[Any, ...], _DecoderPool] = self.ctx.shared.setdefault(NAME, {})
        key = tuple(sorted(kwargs.items()))
        return pools.setdefault(key, _DecoderPool(kwargs))

    async def warm(self) -> None:
        """Create a decoder now (startup) so the first call does not wait for one."""
        pool = self._pool()
        pool.release(await asyncio.to_thread(pool.acquire))

    async def open(self, sample_rate: int, language: str) -> STTStream:
        lang = self.config.language or language
        if not _is_english(lang) and self.config.hmm is None:
            raise ProviderError(
                NAME, f"only en-US is supported without custom model files (got '{lang}')")
        pool = self._pool()
        try:
            decoder = await asyncio.to_thread(pool.acquire)
        except Exception as exc:  # bad custom model paths, missing package
            raise ProviderError(NAME, f"could not create the decoder: {exc}") from exc
        return PocketsphinxStream(self, pool, decoder, sample_rate)


class PocketsphinxStream(STTStream):
    def __init__(self, provider: PocketsphinxSTT, pool: _DecoderPool, decoder: Any,
                 sample_rate: int) -> None:
        cfg = provider.config
        self._ctx: ProviderContext = provider.ctx
        self._model = provider.model_name
        self._pool = pool
        self._decoder = decoder
        self._rate = sample_rate
        self._loop = asyncio.get_running_loop()
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._out: asyncio.Queue[Transcript | BaseException | None] = asyncio.Queue()
        self._backlog = 0  # input samples queued, not yet decoded
        self._backlog_max = int(cfg.max_backlog_s * sample_rate)
        self._backlog_lock = threading.Lock()
        self._dropped = 0
        self._interim_every = cfg.interim_interval_ms * RATE // 1000
        self._max_utt = int(cfg.max_utterance_s * RATE)
        # The bundled model starts CMN for the caller's channel (see phone_band); a custom
        # model keeps its own start value (it may have been trained on phone audio).
        self._detect_band = cfg.hmm is None
        self._error: BaseException | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="pocketsphinx-stream",
                                        daemon=True)
        self._thread.start()

    # -- loop side ----------------------------------------------------------------------------

    async def push(self, frame: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        if self._closing:
            return
        n = len(frame)
        with self._backlog_lock:
            overloaded = self._backlog + n > self._backlog_max
            if not overloaded:
                self._backlog += n
        if overloaded:
            # Never block the call's audio path and never grow without bound: drop and say so.
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 100 == 0:
                log.warning("pocketsphinx is behind real time; dropped %d frames", self._dropped)
            return
        self._inbox.put(np.asarray(frame, dtype=np.int16).copy())

    async def flush(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._closing:
            self._inbox.put(_Flush(time.perf_counter()))

    async def events(self) -> AsyncIterator[Transcript]:
        while True:
            item = await self._out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                self._out.put_nowait(item)
                raise item
            yield item

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
        dec = self._decoder
        resampler = StreamResampler(self._rate, RATE) if self._rate != RATE else None
        in_utt = False
        pos = 0  # 16 kHz samples decoded since the stream opened
        utt_start = 0
        since_interim = 0
        last_interim = ""
        healthy = True

        def finalise(requested_at: float | None) -> None:
            nonlocal in_utt, last_interim, since_interim
            text, confidence, start, seconds = "", 1.0, pos, 0.0
            if in_utt:
                dec.end_utt()
                in_utt = False
                start, seconds = utt_start, (pos - utt_start) / RATE
                hyp = dec.hyp()
                if hyp is not None:
                    text = hyp.hypstr.strip()
                    # hyp.prob is a log posterior in the decoder's log base.
                    confidence = min(1.0, max(0.0, float(dec.get_logmath().exp(hyp.prob))))
            latency = (time.perf_counter() - requested_at) * 1000 if requested_at else None
            t = Transcript(text, True, confidence, start * 1000 // RATE, pos * 1000 // RATE)
            self._post(self._deliver_final, t, seconds, latency)
            last_interim, since_interim = "", 0

        def decode(pcm: np.ndarray) -> None:
            nonlocal in_utt, utt_start, pos, since_interim, last_interim
            if not in_utt:
                dec.start_utt()
                in_utt = True
                utt_start = pos
            dec.process_raw(pcm.tobytes(), False, False)
            pos += len(pcm)
            since_interim += len(pcm)
            if self._interim_every and since_interim >= self._interim_every:
                since_interim = 0
                hyp = dec.hyp()
                text = hyp.hypstr.strip() if hyp is not None else ""
                if text and text != last_interim:
                    last_interim = text
                    self._post(self._deliver, Transcript(
                        text, False, 1.0, utt_start * 1000 // RATE, pos * 1000 // RATE))
            if pos - utt_start >= self._max_utt:
                finalise(None)

        # Until the channel is known, audio from the first loud frame on is held back.
        probe = BandProbe(RATE) if self._detect_band else None
        held: list[np.ndarray] = []

        def settle(phone: bool) -> None:
            nonlocal probe
            if phone:
                dec.set_cmn(PHONE_CMN)
            probe = None
            for pcm in held:  # 20 ms at a time, as always (the GIL)
                decode(pcm)
            held.clear()

        try:
            while True:
                item = self._inbox.get()
                if item is _CLOSE:
                    break
                if isinstance(item, _Flush):
                    if not self._closing:
                        if probe is not None and probe.holding:
                            settle(probe.verdict())
                        finalise(item.requested_at)
                    continue
                with self._backlog_lock:
                    self._backlog -= len(item)
                if self._closing:
                    continue
                pcm = resampler.process(item) if resampler is not None else item
                if not len(pcm):
                    continue
                if probe is not None:
                    phone = probe.feed(pcm)
                    if probe.holding:  # a verdict only ever comes while holding
                        held.append(pcm)
                        if phone is not None:
                            settle(phone)
                        continue
                decode(pcm)
        except Exception as exc:
            healthy = False
            log.exception("pocketsphinx decoding failed")
            self._post(self._deliver_error, ProviderError(NAME, f"decoding failed: {exc}"))
        finally:
            if healthy:
                try:
                    if in_utt:
                        dec.end_utt()
                    self._pool.release(dec)
                except Exception:  # a decoder in an unknown state is not reused
                    log.exception("pocketsphinx decoder could not be reset")
