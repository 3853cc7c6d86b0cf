"""Build a call's VadStream from the agent's VadSettings and the process-wide models."""

from __future__ import annotations

from pipelines.settings import VadSettings
from pipelines.vad.base import VadStream
from pipelines.vad.silero import SileroModel, SileroVadStream


def build_vad_stream(settings: VadSettings, *, silero: SileroModel | None = None) -> VadStream:
    if settings.engine == "silero":
        if silero is None:
            raise ValueError("vad.engine 'silero' needs the Silero model loaded (EngineModels)")
        return SileroVadStream(silero, settings)
    if settings.engine == "webrtc":
        # Imported here: the module pulls in webrtcvad lazily, and silero-only setups skip it.
        from pipelines.vad.webrtc import WebRtcVadStream

        return WebRtcVadStream(settings)
    raise ValueError(f"unknown vad.engine {settings.engine!r} (expected 'silero' or 'webrtc')")
