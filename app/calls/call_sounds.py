"""What a call plays besides its speech, as a part of the call: WAV clips (each reported with
`play.completed` once heard to the end or cut off) and a background under everything.

The clips go through the engine (so barge-in and the played-audio accounting hold), or, in
audio mode, into the customer app's own audio queue; the background is mixed by the playout
sink on its own clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable

from app.calls.customer_app.audio_relay import AudioRelay
from app.tools.control import NotOnThisCall
from pipelines import events as ev
from pipelines.audio.backgrounds import background
from pipelines.audio.wav import decode_wav
from pipelines.conversation import Conversation
from pipelines.ports import BackgroundMixingSink, PlayoutSink
from pipelines.s2s.conversation import S2SConversation
from pipelines.speech import SpeechHandle

Engine = Conversation | S2SConversation | AudioRelay


class CallSounds:
    def __init__(self, sink: PlayoutSink, engine: Callable[[], Engine],
                 emit: ev.EventCallback) -> None:
        self._sink = sink
        self._engine = engine
        self._emit = emit
        self._ids = itertools.count(1)
        self._reporting: set[asyncio.Task[None]] = set()  # clips waiting for play.completed

    async def play(self, wav_bytes: bytes, *, interruptible: bool = True) -> str:
        """Play a WAV file (16-bit PCM, any rate, mono or stereo) after what is playing now.
        Returns its play id at once; `play.completed` {play_id, interrupted} follows. A
        malformed file raises ValueError."""
        samples, rate = decode_wav(wav_bytes)
        play_id = f"play-{next(self._ids)}"
        conv = self._engine()
        if isinstance(conv, AudioRelay):
            # In the app's own audio queue, after what the app sent before it.
            self._report(play_id, self._relayed(play_id, conv.play_pcm(samples, rate)))
        elif isinstance(conv, Conversation):
            handle = conv.play(samples, sample_rate=rate, interruptible=interruptible)
            self._report(play_id, self._played(play_id, handle))
        else:
            raise NotOnThisCall("play is not supported on a speech-to-speech call")
        return play_id

    def _report(self, play_id: str, waiting: Awaitable[None]) -> None:
        task = asyncio.ensure_future(waiting)
        self._reporting.add(task)
        task.add_done_callback(self._reporting.discard)

    async def _played(self, play_id: str, handle: SpeechHandle) -> None:
        await handle
        self._emit(ev.PlayCompleted(play_id=play_id, interrupted=handle.stop_reason is not None))

    async def _relayed(self, play_id: str, played: Awaitable[bool]) -> None:
        interrupted = not await played
        self._emit(ev.PlayCompleted(play_id=play_id, interrupted=interrupted))

    def play_background(self, sound: str, volume: float = 0.5, loop: bool = True) -> None:
        """Lay `sound` (a built-in name: hold_music, office, hum; or base64 WAV data) under the
        call until `stop_background` or the end of the call. Replaces any background playing."""
        self._mixing_sink().set_background(background(sound, volume, loop))

    def stop_background(self) -> None:
        self._mixing_sink().set_background(None)

    def _mixing_sink(self) -> BackgroundMixingSink:
        if not isinstance(self._sink, BackgroundMixingSink):
            raise NotOnThisCall("this call's audio path cannot mix background audio")
        return self._sink

    async def settle(self) -> None:
        """At the end of the call: the engine's shutdown resolves every clip; report them."""
        for task in list(self._reporting):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 1.0)
