"""What a customer app may send, as typed commands.

The vocabulary is Plivo AgentStack's: `{"type": "tool.result", ...}`, `{"type":
"agent_session.speak", ...}`, and in audio mode Plivo's own stream words (`{"event": "playAudio",
...}`). `parse_command` turns one text frame into one command or raises `InvalidMessage`, whose
`code` and `message` go back to the app; unknown extra keys are ignored (apps written for
AgentStack send a few, e.g. `streamId`).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.tools.control import NOBODY_ANSWERED_MESSAGE

MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # a played WAV arrives in one message


class InvalidMessage(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Command(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError("must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64") from None


# -- managed mode ---------------------------------------------------------------------------
class ToolResult(_Command):
    id: str = Field(min_length=1)
    result: Any = None


class ToolError(_Command):
    id: str = Field(min_length=1)
    error: str = "the tool failed"


# -- text mode ------------------------------------------------------------------------------
class TextToken(_Command):
    token: str = ""
    last: bool = False
    request_id: str | None = None


class ExtendWait(_Command):
    seconds: float | None = Field(None, gt=0, le=300)


# -- audio mode (Plivo's stream words) ------------------------------------------------------
class PlayAudio(_Command):
    content_type: Literal["audio/x-mulaw", "audio/x-l16"] = "audio/x-mulaw"
    sample_rate: int = Field(8000, ge=8000, le=48000)
    payload: bytes

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> PlayAudio:
        media = msg.get("media")
        if not isinstance(media, dict):
            raise ValueError("media: must be an object")
        payload = media.get("payload")
        try:
            data = _b64(payload)
        except ValueError as exc:
            raise ValueError(f"media.payload: {exc}") from None
        return cls.model_validate({"content_type": media.get("contentType", "audio/x-mulaw"),
                                   "sample_rate": media.get("sampleRate", 8000),
                                   "payload": data})


class Checkpoint(_Command):
    name: str = Field(min_length=1, max_length=200)


class ClearAudio(_Command):
    pass


# -- control (every mode) -------------------------------------------------------------------
class Update(_Command):
    system_prompt: str | None = Field(None, min_length=1)
    # Names the persona taking over (reported in agent.handoff).
    new_agent: str = Field("", max_length=200)
    tools: list[dict[str, Any]] | None = None
    llm: dict[str, Any] | None = None
    tts: dict[str, Any] | None = None
    voice: str | None = Field(None, min_length=1, max_length=200)
    # vad / turn / interruption / idle / semantic_vad, merged into the call's settings.
    turn_taking: dict[str, Any] | None = None


class Inject(_Command):
    content: str = Field(min_length=1, max_length=20000)


class Speak(_Command):
    text: str = Field(min_length=1, max_length=5000)
    allow_interruption: bool = True


class Play(_Command):
    audio_data: bytes
    allow_interruption: bool = True

    @field_validator("audio_data", mode="before")
    @classmethod
    def _decode(cls, v: Any) -> bytes:
        return _b64(v)


class Transfer(_Command):
    destination: list[str] = Field(min_length=1, max_length=10)
    dial_mode: Literal["parallel", "sequential"] = "parallel"
    timeout: int = Field(30, ge=5, le=120)
    # Ours: a warm transfer (caller on hold, target briefed first, back to the agent when
    # nobody answers); the brief, and what the caller hears if nobody does.
    mode: Literal["cold", "warm"] = "cold"
    brief: str = Field("", max_length=1000)
    failure_message: str = Field(NOBODY_ANSWERED_MESSAGE, max_length=1000)

    @field_validator("destination", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class SendDtmf(_Command):
    digits: str = Field(pattern=r"^[0-9A-Da-d*#wW]{1,64}$")


class Hangup(_Command):
    pass


class Mix(_Command):
    sound: str = Field(min_length=1)
    volume: float = Field(0.5, ge=0.0, le=1.0)
    loop: bool = True


class MixEnable(_Command):
    enabled: bool


Command = (ToolResult | ToolError | TextToken | ExtendWait | PlayAudio | Checkpoint | ClearAudio
           | Update | Inject | Speak | Play | Transfer | SendDtmf | Hangup | Mix | MixEnable)

# `type` values (Phonebooth's and AgentStack's words) and `event` values (Plivo's).
BY_TYPE: dict[str, type[_Command]] = {
    "tool.result": ToolResult,
    "tool.error": ToolError,
    "text": TextToken,
    "agent_session.extend_wait": ExtendWait,
    "agent_session.update": Update,
    "agent_session.inject": Inject,
    "agent_session.speak": Speak,
    "agent_session.play": Play,
    "agent_session.transfer": Transfer,
    "agent_session.send_dtmf": SendDtmf,
    "agent_session.hangup": Hangup,
    "audio.mix": Mix,
    "audio.mix_enable": MixEnable,
}
BY_EVENT: dict[str, type[_Command]] = {
    "playAudio": PlayAudio,
    "checkpoint": Checkpoint,
    "clearAudio": ClearAudio,
}


def parse_command(raw: str | bytes) -> Command:
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidMessage("invalid_message", f"message over {MAX_MESSAGE_BYTES} bytes")
    try:
        msg = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidMessage("invalid_message", f"not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise InvalidMessage("invalid_message", "a message must be a JSON object")
    kind = msg.get("type")
    model = BY_TYPE.get(kind) if isinstance(kind, str) else None
    if model is None and kind is None and isinstance(msg.get("event"), str):
        kind = msg["event"]
        model = BY_EVENT.get(kind)
    if model is None:
        if kind is None:
            raise InvalidMessage("invalid_message", "a message needs a 'type'")
        raise InvalidMessage("unknown_type", f"unknown message type {str(kind)[:60]!r}")
    try:
        if model is PlayAudio:
            return PlayAudio.from_message(msg)
        return model.model_validate(msg)  # type: ignore[return-value]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or kind
        raise InvalidMessage("invalid_message", f"{kind}: {where}: {first['msg']}") from None
    except ValueError as exc:
        raise InvalidMessage("invalid_message", f"{kind}: {exc}") from None
