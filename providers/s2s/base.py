"""The speech-to-speech contract: a provider opens one live session per call.

A session takes the caller's audio as PCM16 at the provider's `input_rate` and yields typed
events (each with a `kind`, like the LLM events): model audio (PCM16 at `output_rate`),
transcripts both ways, the vendor VAD's speech start (barge-in), function calls, usage and the
end of each response. The host answers
function calls with `send_tool_result` and, on barge-in, tells the model how much of its reply
the caller actually heard with `truncate`, so the model's memory matches the caller's.

With `output: text` (hybrid) the model is asked for text only: the session yields `OutputText`
deltas (and `TextDone` where the vendor marks the end of an item's text) instead of audio, the
agent's own TTS speaks them, and on barge-in `keep_heard_text` tells the model what was heard.

With `turn_detection: phonebooth` the vendor's VAD is switched off at setup and Phonebooth's own
VAD and end-of-turn model drive the session: `activity_start` when the caller starts speaking,
`cancel_response` when that cuts a reply still being generated, `activity_end` at the end of
the caller's turn (which has the model answer).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from providers.base import Kind, Provider, ToolCall, ToolSpec, Usage
from providers.http import CloudConfig


class S2SConfig(CloudConfig):
    """Options every speech-to-speech adapter accepts (the agent's `s2s` block)."""

    model: str
    voice: str | None = None
    base_url: str | None = Field(None, pattern=r"^(wss?|https?)://")
    # server_vad: the vendor's voice activity detection ends turns and reports barge-in.
    # phonebooth: the agent's own VAD and end-of-turn model (its `vad` and `turn` settings, as
    # in the cascaded pipeline) decide both, and tell the model.
    turn_detection: Literal["server_vad", "phonebooth"] = "server_vad"
    temperature: float | None = Field(None, ge=0, le=2)
    # audio: the model speaks. text: the model writes its reply and the agent's `tts` block
    # speaks it (one voice across s2s and cascaded agents, at the cost of the TTS's latency).
    output: Literal["audio", "text"] = "audio"


@dataclass(slots=True)
class AudioOut:
    item_id: str
    samples: np.ndarray  # int16 mono at the provider's output_rate
    kind: Literal["audio"] = "audio"


@dataclass(slots=True)
class OutputTranscript:
    """Text of what the model is saying (a delta)."""

    item_id: str
    text: str
    kind: Literal["output_transcript"] = "output_transcript"


@dataclass(slots=True)
class OutputText:
    """Text the model writes for the caller (a delta; `output: text`)."""

    item_id: str
    text: str
    kind: Literal["output_text"] = "output_text"


@dataclass(slots=True)
class TextDone:
    """The item's text is complete (OpenAI's `…text.done`): speak its last sentence now."""

    item_id: str
    kind: Literal["text_done"] = "text_done"


@dataclass(slots=True)
class InputTranscript:
    """What the caller said, transcribed by the vendor (a finished utterance)."""

    text: str
    kind: Literal["input_transcript"] = "input_transcript"


@dataclass(slots=True)
class SpeechStarted:
    """The vendor's VAD heard the caller start speaking: stop playout (barge-in)."""

    audio_start_ms: int
    kind: Literal["speech_started"] = "speech_started"


@dataclass(slots=True)
class SpeechStopped:
    """The vendor's VAD heard the caller stop: the reply latency clock starts here."""

    audio_end_ms: int
    kind: Literal["speech_stopped"] = "speech_stopped"


@dataclass(slots=True)
class Interrupted:
    """The vendor itself cut its reply short because the caller spoke (Gemini)."""

    kind: Literal["interrupted"] = "interrupted"


@dataclass(slots=True)
class ResponseDone:
    status: str = "completed"
    kind: Literal["response_done"] = "response_done"


S2SEvent = (AudioOut | OutputTranscript | OutputText | TextDone | InputTranscript
            | SpeechStarted | SpeechStopped | Interrupted | ToolCall | Usage | ResponseDone)


class S2SSession(abc.ABC):
    @abc.abstractmethod
    async def send_audio(self, samples: np.ndarray) -> None:
        """Caller audio, int16 mono at the provider's input_rate."""

    @abc.abstractmethod
    def events(self) -> AsyncIterator[S2SEvent]:
        """Events until the session ends; a vendor failure raises ProviderError."""

    @abc.abstractmethod
    async def send_tool_result(self, call: ToolCall, output: str) -> None:
        """Return a function's result and let the model continue its reply."""

    @abc.abstractmethod
    async def truncate(self, item_id: str, audio_end_ms: int) -> None:
        """Forget the model's reply after what the caller heard (ms of the item's audio)."""

    @abc.abstractmethod
    async def keep_heard_text(self, item_id: str, heard: str) -> None:
        """A text reply (`output: text`) was cut: the model should remember only `heard`."""

    @abc.abstractmethod
    async def respond(self, instructions: str) -> None:
        """Have the model speak now, following `instructions` (the greeting)."""

    @abc.abstractmethod
    async def activity_start(self) -> None:
        """Phonebooth's VAD heard the caller start a turn (turn_detection: phonebooth)."""

    @abc.abstractmethod
    async def activity_end(self) -> None:
        """Phonebooth decided the caller's turn is over: the model answers it."""

    @abc.abstractmethod
    async def cancel_response(self) -> None:
        """Stop generating the reply in progress (the caller talked over it)."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...


class S2SProvider(Provider):
    kind: ClassVar[Kind] = "s2s"
    input_rate: ClassVar[int]
    output_rate: ClassVar[int]

    @abc.abstractmethod
    async def connect(self, instructions: str, tools: list[ToolSpec]) -> S2SSession:
        """Open and configure a session; raises ProviderError when the vendor refuses."""
