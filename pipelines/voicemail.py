"""Answering-machine detection: is the callee of an outbound call a person or a voicemail?

Fed the first seconds of the callee's side of the call — 20 ms frames, the VAD's speech edges
and the STT's transcripts — the detector decides once:

- machine, "beep": a voicemail beep (pipelines.audio.beep) — the machine is already recording;
- machine, "transcript": words only a recording says ("leave a message", "not available",
  "after the tone", "voicemail", ...);
- machine, "greeting_length": speech going on for `long_greeting_ms` with no real pause — people
  answer "Hello?" and wait; recorded greetings run on;
- human, "silence": a short greeting followed by `human_silence_ms` of silence (the person waits
  for us), once its final transcript had a chance to reveal a recording;
- human, "timeout": nothing decisive within `timeout_ms` (silence included): a person who picked
  up and said nothing still gets the agent.

After a machine verdict it keeps listening for the moment to leave a message:
`ready_for_message` turns true when the beep has ended, or once the greeting is followed by
`message_silence_ms` of silence (machines without a beep).

Time is the audio stream's own clock (frames pushed), so the detector is deterministic and does
not care how late the events reach it. Pure: no I/O, no asyncio.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipelines.audio.beep import Beep, BeepDetector
from pipelines.audio.frames import SAMPLE_RATE

Result = Literal["human", "machine"]
Method = Literal["beep", "transcript", "greeting_length", "silence", "timeout"]

# Said by recordings, rarely by a person answering their phone.
MACHINE_PHRASES = (
    "leave a message", "leave your message", "leave me a message", "leave a voicemail",
    "leave your name", "not available", "unavailable", "after the tone", "after the beep",
    "at the tone", "at the beep", "voicemail", "voice mail", "mailbox", "message box",
    "record your message", "can't come to the phone", "cannot come to the phone",
    "can't take your call", "cannot take your call", "can't answer the phone",
    "please leave", "no one is available", "nobody is available", "away from the phone",
    "the person you are calling", "the number you have dialed", "is not in service",
)
_NON_WORD = re.compile(r"[^a-z0-9' ]+")
_SPACES = re.compile(r"\s+")


def machine_phrase(text: str) -> str | None:
    """The first recording phrase found in `text` (case and punctuation ignored)."""
    t = _SPACES.sub(" ", _NON_WORD.sub(" ", text.lower().replace("’", "'"))).strip()
    t = t.replace("voice mail", "voicemail")
    padded = f" {t} "
    for phrase in MACHINE_PHRASES:
        if f" {phrase.replace('voice mail', 'voicemail')} " in padded:
            return phrase
    return None


@dataclass(frozen=True, slots=True)
class Verdict:
    result: Result
    method: Method
    at_ms: float  # stream position of the decision
    detail: str = ""  # the phrase, the beep frequency, ...


class VoicemailDetector:
    def __init__(
        self,
        *,
        timeout_ms: float = 6000.0,
        long_greeting_ms: float = 4000.0,
        human_silence_ms: float = 800.0,
        final_grace_ms: float = 1000.0,
        message_silence_ms: float = 1500.0,
        sample_rate: int = SAMPLE_RATE,
        beep: BeepDetector | None = None,
    ) -> None:
        self.timeout_ms = timeout_ms
        self.long_greeting_ms = long_greeting_ms
        self.human_silence_ms = human_silence_ms
        self.final_grace_ms = final_grace_ms
        self.message_silence_ms = message_silence_ms
        self.sample_rate = sample_rate
        self._beeps = beep or BeepDetector(sample_rate=sample_rate)
        self.stream_ms = 0.0
        self.verdict: Verdict | None = None
        self.beep: Beep | None = None
        self.transcript = ""
        self._finals: list[str] = []
        self._speaking = False
        self._heard_speech = False
        self._utterance_start_ms = 0.0
        self._run_ms = 0.0  # speech in the current run of utterances (short pauses joined)
        self._last_stop_ms: float | None = None
        self._final_after_stop = False
        self._ready = False

    # -- inputs ------------------------------------------------------------------------------
    def push_audio(self, frame: np.ndarray) -> Verdict | None:
        """One frame of the callee's audio; returns the verdict when this frame decides."""
        self.stream_ms += len(frame) * 1000.0 / self.sample_rate
        beep = self._beeps.push(frame)
        if beep is not None:
            self.beep = beep
            if self.verdict is None:
                return self._decide("machine", "beep", f"{beep.frequency_hz:.0f} Hz")
            return None
        return self._check_time()

    def speech_started(self) -> None:
        if self._speaking:
            return
        self._speaking = True
        self._heard_speech = True
        gap = None if self._last_stop_ms is None else self.stream_ms - self._last_stop_ms
        if gap is not None and gap >= self.human_silence_ms:
            self._run_ms = 0.0  # a real pause: a new run of speech
        self._utterance_start_ms = self.stream_ms

    def speech_stopped(self) -> Verdict | None:
        if not self._speaking:
            return None
        self._speaking = False
        self._run_ms += self.stream_ms - self._utterance_start_ms
        self._last_stop_ms = self.stream_ms
        self._final_after_stop = False
        return self._check_time()

    def add_transcript(self, text: str, is_final: bool) -> Verdict | None:
        text = text.strip()
        if is_final:
            if text:
                self._finals.append(text)
            self._final_after_stop = self._last_stop_ms is not None and not self._speaking
        heard = " ".join([*self._finals, *([] if is_final or not text else [text])])
        self.transcript = " ".join(self._finals)
        if self.verdict is None:
            phrase = machine_phrase(heard)
            if phrase is not None:
                return self._decide("machine", "transcript", phrase)
        return None

    # -- state -------------------------------------------------------------------------------
    @property
    def ready_for_message(self) -> bool:
        """After a machine verdict: the machine is (most likely) recording now."""
        if self._ready:
            return True
        v = self.verdict
        if v is None or v.result != "machine":
            return False
        if self.beep is not None:
            # Recording starts when the beep ends: speaking over its tail would be lost.
            self._ready = not self._beeps.in_tone
        elif not self._speaking and self._silence_ms() >= self.message_silence_ms:
            self._ready = True
        return self._ready

    def _silence_ms(self) -> float:
        if self._speaking:
            return 0.0
        since = self._last_stop_ms if self._last_stop_ms is not None else 0.0
        return self.stream_ms - since

    def _check_time(self) -> Verdict | None:
        if self.verdict is not None:
            return None
        run = self._run_ms + (self.stream_ms - self._utterance_start_ms if self._speaking else 0)
        if run >= self.long_greeting_ms:
            return self._decide("machine", "greeting_length", f"{run:.0f} ms of speech")
        if self._heard_speech and not self._speaking:
            silence = self._silence_ms()
            if silence >= self.human_silence_ms and (
                    self._final_after_stop or silence >= self.human_silence_ms
                    + self.final_grace_ms):
                return self._decide("human", "silence", f"{run:.0f} ms greeting")
        if self.stream_ms >= self.timeout_ms:
            return self._decide("human", "timeout")
        return None

    def _decide(self, result: Result, method: Method, detail: str = "") -> Verdict:
        self.verdict = Verdict(result, method, round(self.stream_ms, 1), detail)
        return self.verdict
