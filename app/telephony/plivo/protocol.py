"""The Plivo audio-stream WebSocket protocol as typed messages.

Inbound: `parse_message` turns one text frame into a typed message or raises `ProtocolError`
naming what is wrong; the stream handler logs that and carries on. Every documented event is
covered, plus the undocumented ones Plivo-authored clients handle (`stop`, `played`,
`playFailed`, `error`); anything else becomes `Unknown` so it can be logged, not crash.

Outbound: builders for `playAudio`, `checkpoint`, `clearAudio`, `sendDTMF`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

MAX_MESSAGE_BYTES = 64 * 1024  # Plivo's documented WebSocket message limit
DTMF_DIGITS = re.compile(r"^[0-9A-D*#]+$")


class ProtocolError(ValueError):
    """A message that cannot be understood; safe to log (no payload echoed)."""


@dataclass(frozen=True, slots=True)
class Start:
    sequence: int
    call_id: str
    stream_id: str
    account_id: str
    tracks: tuple[str, ...]
    encoding: str
    sample_rate: int
    extra_headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Media:
    sequence: int
    stream_id: str
    track: str
    chunk: int | None
    timestamp: str
    payload: bytes
    # Plivo's media carries no codec; a few Plivo-compatible clones add one. When present and
    # different from the negotiated codec, the frame is skipped rather than decoded as noise.
    encoding: str | None = None


@dataclass(frozen=True, slots=True)
class Dtmf:
    sequence: int
    stream_id: str
    digit: str
    track: str
    timestamp: str


@dataclass(frozen=True, slots=True)
class PlayedStream:
    sequence: int
    stream_id: str
    name: str


@dataclass(frozen=True, slots=True)
class ClearedAudio:
    sequence: int
    stream_id: str


@dataclass(frozen=True, slots=True)
class Stop:
    sequence: int
    stream_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class PlayFailed:
    sequence: int
    stream_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class StreamError:
    sequence: int
    stream_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Unknown:
    event: str
    sequence: int


Message = (Start | Media | Dtmf | PlayedStream | ClearedAudio | Stop | PlayFailed | StreamError
           | Unknown)


def _seq(d: dict[str, Any]) -> int:
    v = d.get("sequenceNumber", 0)
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def _obj(d: dict[str, Any], key: str) -> dict[str, Any]:
    v = d.get(key)
    if not isinstance(v, dict):
        raise ProtocolError(f"'{d.get('event')}' message without a '{key}' object")
    return v


def _str(d: dict[str, Any], key: str, where: str, required: bool = True) -> str:
    v = d.get(key)
    if v is None:
        if required:
            raise ProtocolError(f"{where}: missing '{key}'")
        return ""
    if not isinstance(v, (str, int)):
        raise ProtocolError(f"{where}: '{key}' must be a string")
    return str(v)


def parse_extra_headers(raw: Any) -> dict[str, str]:
    """`extra_headers` arrives as a raw string: `k=v` pairs split by ';' or ',', or JSON."""
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    if not isinstance(raw, str) or not raw.strip():
        return {}
    s = raw.strip()
    if s.startswith("{"):
        try:
            obj = json.loads(s)
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in obj.items()} if isinstance(obj, dict) else {}
    out: dict[str, str] = {}
    for part in re.split(r"[;,]", s):
        k, sep, v = part.partition("=")
        if sep and k.strip():
            out[k.strip()] = v.strip()
    return out


def _start(d: dict[str, Any]) -> Start:
    s = _obj(d, "start")
    fmt = s.get("mediaFormat")
    if not isinstance(fmt, dict):
        raise ProtocolError("start: missing 'mediaFormat'")
    encoding = _str(fmt, "encoding", "start.mediaFormat").strip().lower()
    rate_raw = fmt.get("sampleRate")
    # some encodings arrive as "audio/x-l16;rate=16000"
    enc, _, params = encoding.partition(";")
    if rate_raw is None and params.startswith("rate="):
        rate_raw = params[5:]
    try:
        rate = int(rate_raw) if rate_raw is not None else 8000
    except (TypeError, ValueError):
        raise ProtocolError("start.mediaFormat: 'sampleRate' is not a number") from None
    tracks = s.get("tracks") or ["inbound"]
    if not isinstance(tracks, list):
        tracks = ["inbound"]
    return Start(
        sequence=_seq(d),
        call_id=_str(s, "callId", "start"),
        stream_id=_str(s, "streamId", "start"),
        account_id=_str(s, "accountId", "start", required=False),
        tracks=tuple(str(t) for t in tracks),
        encoding=enc.strip(),
        sample_rate=rate,
        extra_headers=parse_extra_headers(d.get("extra_headers")),
    )


def _media(d: dict[str, Any]) -> Media:
    m = _obj(d, "media")
    payload = m.get("payload")
    if not isinstance(payload, str):
        raise ProtocolError("media: missing 'payload'")
    try:
        audio = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("media: payload is not valid base64") from None
    chunk = m.get("chunk")
    enc = m.get("contentType") or m.get("encoding")
    return Media(
        sequence=_seq(d),
        stream_id=str(d.get("streamId", "")),
        track=str(m.get("track", "inbound")),
        chunk=chunk if isinstance(chunk, int) else None,
        timestamp=str(m.get("timestamp", "")),
        payload=audio,
        encoding=enc.partition(";")[0].strip().lower() if isinstance(enc, str) else None,
    )


def _dtmf(d: dict[str, Any]) -> Dtmf:
    x = _obj(d, "dtmf")
    digit = _str(x, "digit", "dtmf")
    if not DTMF_DIGITS.match(digit):
        raise ProtocolError(f"dtmf: invalid digit {digit[:8]!r}")
    return Dtmf(_seq(d), str(d.get("streamId", "")), digit, str(x.get("track", "inbound")),
                str(x.get("timestamp", "")))


def _reason(d: dict[str, Any]) -> str:
    for key in ("reason", "error", "message"):
        v = d.get(key)
        if isinstance(v, str):
            return v[:500]
        if isinstance(v, dict):
            return json.dumps(v)[:500]
    return ""


def parse_message(raw: str | bytes) -> Message:
    if isinstance(raw, bytes):
        if len(raw) > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
        try:
            raw = raw.decode()
        except UnicodeDecodeError:
            raise ProtocolError("binary frame is not UTF-8 JSON") from None
    elif len(raw) > MAX_MESSAGE_BYTES:  # len in chars ≥ … close enough, and cheap
        raise ProtocolError(f"message of {len(raw)} characters exceeds {MAX_MESSAGE_BYTES}")
    try:
        d = json.loads(raw)
    except ValueError:
        raise ProtocolError("message is not valid JSON") from None
    if not isinstance(d, dict):
        raise ProtocolError("message is not a JSON object")
    event = d.get("event")
    if not isinstance(event, str) or not event:
        raise ProtocolError("message has no 'event'")
    if event == "media":
        return _media(d)
    if event == "start":
        return _start(d)
    if event == "dtmf":
        return _dtmf(d)
    if event in ("playedStream", "played"):
        name = d.get("name")
        if not isinstance(name, str):
            raise ProtocolError(f"{event}: missing 'name'")
        return PlayedStream(_seq(d), str(d.get("streamId", "")), name)
    if event == "clearedAudio":
        return ClearedAudio(_seq(d), str(d.get("streamId", "")))
    if event == "stop":
        return Stop(_seq(d), str(d.get("streamId", "")), _reason(d))
    if event == "playFailed":
        return PlayFailed(_seq(d), str(d.get("streamId", "")), _reason(d))
    if event == "error":
        return StreamError(_seq(d), str(d.get("streamId", "")), _reason(d))
    return Unknown(event[:64], _seq(d))


# --- outbound ------------------------------------------------------------------------------
def play_audio(payload: bytes, encoding: str, sample_rate: int) -> str:
    return json.dumps({
        "event": "playAudio",
        "media": {"contentType": encoding, "sampleRate": sample_rate,
                  "payload": base64.b64encode(payload).decode()},
    }, separators=(",", ":"))


def checkpoint(stream_id: str, name: str) -> str:
    return json.dumps({"event": "checkpoint", "streamId": stream_id, "name": name},
                      separators=(",", ":"))


def clear_audio(stream_id: str) -> str:
    return json.dumps({"event": "clearAudio", "streamId": stream_id}, separators=(",", ":"))


def send_dtmf(digits: str) -> str:
    if not DTMF_DIGITS.match(digits):
        raise ValueError(f"DTMF digits must match [0-9A-D*#]+, got {digits!r}")
    return json.dumps({"event": "sendDTMF", "dtmf": digits}, separators=(",", ":"))
