"""webrtcvad (GMM, fixed-point C) as a VAD for very low CPU: microseconds per 20 ms frame, no
model file, no batching needed — it runs inline on the event loop.

Less accurate than Silero on noisy phone audio (it fires on many non-speech sounds), so it is an
opt-in per agent (`vad.engine: webrtc`); `vad.webrtc_mode` 0..3 trades misses for false alarms.
The package is `webrtcvad-wheels` (in the `local` extra), imported lazily.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from pipelines.settings import VadSettings
from pipelines.vad.base import VadEvent
from pipelines.vad.frames import as_int16_frame
from pipelines.vad.segmenter import SpeechSegmenter

SAMPLE_RATE = 16000
WINDOW = 320  # 20 ms; webrtcvad accepts 10, 20 or 30 ms


class WebRtcVadStream:
    """Per-call webrtcvad (implements pipelines.vad.base.VadStream); probability is 0 or 1."""

    def __init__(self, settings: VadSettings) -> None:
        try:
            import webrtcvad
        except ImportError as exc:  # optional dependency: say exactly what to install
            raise RuntimeError(
                "vad.engine 'webrtc' needs the webrtcvad-wheels package "
                "(pip install 'phonebooth[local]' or pip install webrtcvad-wheels)"
            ) from exc
        self._vad = webrtcvad.Vad(settings.webrtc_mode)
        self._segmenter = SpeechSegmenter(settings.start_ms, settings.stop_ms, SAMPLE_RATE)
        self._pending = np.zeros(0, dtype=np.int16)
        self._events: deque[VadEvent] = deque()
        self._clock = 0
        self._closed = False

    def retune(self, settings: VadSettings) -> None:
        self._vad.set_mode(settings.webrtc_mode)
        self._segmenter.retune(settings.start_ms, settings.stop_ms)
        self.speaking = False
        self.probability = 0.0

    async def process(self, frame: np.ndarray) -> VadEvent | None:
        return self._process(frame)

    async def process_frames(self, frames: Sequence[np.ndarray]) -> list[VadEvent | None]:
        # Inline C, microseconds a frame: nothing to gain from doing them together.
        return [self._process(f) for f in frames]

    def _process(self, frame: np.ndarray) -> VadEvent | None:
        if self._closed:
            raise RuntimeError("VAD stream is closed")
        pcm = as_int16_frame(frame)
        if len(self._pending) == 0 and len(pcm) == WINDOW:
            windows = [pcm]  # the usual case: one 20 ms frame, no copying
        else:
            self._pending = np.concatenate([self._pending, pcm])
            n = len(self._pending) // WINDOW
            windows = [self._pending[i * WINDOW : (i + 1) * WINDOW] for i in range(n)]
            self._pending = self._pending[n * WINDOW :].copy()
        for window in windows:
            speech = self._vad.is_speech(np.ascontiguousarray(window).tobytes(), SAMPLE_RATE)
            self.probability = 1.0 if speech else 0.0
            event = self._segmenter.update(speech, self._clock, WINDOW)
            self._clock += WINDOW
            if event is not None:
                self._events.append(event)
        self.speaking = self._segmenter.speaking
        return self._events.popleft() if self._events else None

    def reset(self) -> None:
        self._clock += len(self._pending)
        self._pending = np.zeros(0, dtype=np.int16)
        self._segmenter.reset()
        self._events.clear()
        self.speaking = False
        self.probability = 0.0

    async def aclose(self) -> None:
        self._closed = True
        self._events.clear()
