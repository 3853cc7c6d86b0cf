"""One call's recording, as a part of the call: started with the call's audio path, stored in
the background once the call has ended (its end never waits for the upload), reported with
`recording.completed` or `recording.failed` after `session.ended`.

The audio itself is taken by the transport (what the caller said, and what the caller heard on
the playout's clock; see pipelines/audio/recorder.py); storage is app/calls/recordings.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

from app.agent_config import RecordingSettings
from app.calls.recordings import RecordingStore
from app.calls.transport import CallTransport, RecordableTransport
from pipelines import events as ev
from pipelines.audio.recorder import CallRecorder

log = logging.getLogger(__name__)


class CallRecording:
    def __init__(self, settings: RecordingSettings, session_id: str, store: RecordingStore,
                 storing: set[asyncio.Task[None]],
                 publish: Callable[[ev.Event], None]) -> None:
        self.settings = settings
        self.session_id = session_id
        self._store = store
        # The host's set of recordings being stored (awaited at shutdown).
        self._storing = storing
        self._publish = publish
        self.recorder: CallRecorder | None = None
        self._error: str | None = None

    def start(self, transport: CallTransport) -> None:
        if not self.settings.enabled:
            return
        if not isinstance(transport, RecordableTransport):
            self._error = "this call's audio path cannot be recorded"
            return
        try:
            path = self._store.partial_path(self.session_id)
            self.recorder = transport.start_recording(
                path, 2 if self.settings.channels == "stereo" else 1)
        except Exception as exc:
            log.warning("session %s: recording could not start: %s", self.session_id, exc)
            self._error = f"recording could not start: {exc}"

    def finish(self) -> None:
        """Complete the recording and store it in the background."""
        if not self.settings.enabled:
            return
        task = asyncio.get_running_loop().create_task(
            self._stored(self.recorder), name=f"recording-{self.session_id}")
        self._storing.add(task)
        task.add_done_callback(self._storing.discard)

    async def _stored(self, recorder: CallRecorder | None) -> None:
        try:
            if recorder is None:
                raise RuntimeError(self._error or "the recording did not start")
            try:
                info = recorder.finish()
            except Exception as exc:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(os.unlink, recorder.path)
                raise RuntimeError(f"writing the recording failed: {exc}") from exc
            stored = await self._store.store(self.session_id, info.path)
        except Exception as exc:
            log.warning("session %s: recording not stored: %s", self.session_id, exc)
            self._publish(ev.RecordingFailed(message=str(exc)[:300]))
            return
        log.info("session %s: recording stored at %s (%.1f s, %d bytes)", self.session_id,
                 stored.location, info.duration_s, stored.bytes)
        self._publish(ev.RecordingCompleted(
            duration_s=round(info.duration_s, 3), channels=self.settings.channels,
            format="wav", location=stored.location, bytes=stored.bytes))
