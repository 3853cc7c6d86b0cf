"""Plivo's side of the wire, once: the callbacks it signs, how it reads the answer XML, how it
opens the stream, and the messages it sends on it.

Both drivers of a simulated call build on this: `far_end.SimCall` (one call, fully recorded:
`phonebooth call` and the tests) and `bench/plivo_driver.py` (hundreds of lean calls on one
core). Field names and shapes follow Plivo's published stream protocol: `start` carries
`callId`, `streamId`, `accountId`, `tracks` and `mediaFormat{encoding, sampleRate}`; `media`
carries `track`, `timestamp` (a string), `chunk` and a base64 `payload`; every message a
top-level `sequenceNumber` and `extra_headers` (a string).
"""

from __future__ import annotations

import json
import secrets
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from app.telephony.plivo.signature import sign_v3_headers, websocket_signed_url

FRAME_S = 0.02  # Plivo sends one `media` message per 20 ms of caller audio
USER_AGENT = "PlivoHTTP (phonebooth simulator)"
DEFAULT_FROM = "14155550100"
# (HangupCause, HangupCauseCode, HangupCauseName, HangupSource) of an ordinary caller hangup.
CALLER_HANGUP = ("NORMAL_CLEARING", "4000", "Normal Hangup", "Caller")


def signed_headers(auth_token: str, method: str, url: str, params: dict[str, Any] | None, *,
                   main_auth_token: str | None = None) -> dict[str, str]:
    """The V3 signature headers Plivo sends with a request to `url`, with a fresh nonce."""
    nonce = str(secrets.randbelow(10**20))
    return sign_v3_headers(auth_token, method, url, params, nonce,
                           main_auth_token=main_auth_token)


def with_base(url: str, base: str) -> str:
    """`url` with scheme and host taken from `base` (ws/wss for WebSocket URLs): a URL the
    server handed out, reached at the address the driver was given."""
    u, b = urlsplit(url), urlsplit(base)
    scheme = b.scheme
    if u.scheme in ("ws", "wss"):
        scheme = "wss" if b.scheme == "https" else "ws"
    return urlunsplit((scheme, b.netloc, u.path, u.query, ""))


# --- callbacks ---------------------------------------------------------------------------------
def answer_params(call_uuid: str, *, to: str, from_: str = DEFAULT_FROM,
                  direction: str = "inbound") -> dict[str, str]:
    """The form Plivo posts to the answer URL when a call comes in (or an outbound one
    connects)."""
    return {"CallUUID": call_uuid, "From": from_.lstrip("+"), "To": to.lstrip("+"),
            "Direction": direction,
            "CallStatus": "ringing" if direction == "inbound" else "in-progress",
            "Event": "StartApp"}


def hangup_params(call_uuid: str, *, to: str, from_: str = DEFAULT_FROM,
                  direction: str = "inbound", duration_s: float,
                  cause: tuple[str, str, str, str] = CALLER_HANGUP) -> dict[str, str]:
    """The form Plivo posts to the hangup URL once the call is over."""
    name, code, cause_name, source = cause
    duration = str(max(0, round(duration_s)))
    params = {"CallUUID": call_uuid, "From": from_.lstrip("+"), "To": to.lstrip("+"),
              "Direction": direction, "CallStatus": "completed", "Event": "Hangup",
              "HangupCause": name, "HangupCauseName": cause_name, "HangupSource": source,
              "Duration": duration, "BillDuration": duration}
    if code:
        params["HangupCauseCode"] = code
    return params


@dataclass
class AnswerResult:
    status_code: int
    body: str
    kind: str  # stream | hangup | speak | dial | empty | invalid | http_error
    stream_url: str | None = None
    stream_attrs: dict[str, str] = field(default_factory=dict)
    hangup_reason: str | None = None
    speak_text: str | None = None

    @property
    def content_type(self) -> str:
        return self.stream_attrs.get("contentType", "audio/x-l16;rate=8000")  # Plivo's default

    @property
    def status_callback_url(self) -> str | None:
        return self.stream_attrs.get("statusCallbackUrl")


def parse_answer(status_code: int, body: str) -> AnswerResult:
    """Interpret an answer-URL response the way Plivo would."""
    if status_code != 200:
        return AnswerResult(status_code, body, "http_error")
    try:
        root = ET.fromstring(body.strip().encode())
    except ET.ParseError:
        return AnswerResult(status_code, body, "invalid")
    if root.tag != "Response":
        return AnswerResult(status_code, body, "invalid")
    res = AnswerResult(status_code, body, "empty")
    for el in root:
        if el.tag == "Stream" and res.kind in ("empty", "speak"):
            res.kind = "stream"
            res.stream_url = (el.text or "").strip()
            res.stream_attrs = dict(el.attrib)
        elif el.tag == "Speak" and res.speak_text is None:
            res.speak_text = (el.text or "").strip()
            if res.kind == "empty":
                res.kind = "speak"
        elif el.tag == "Hangup":
            res.hangup_reason = el.attrib.get("reason", "")
            if res.kind in ("empty", "speak"):
                res.kind = "hangup"
        elif el.tag == "Dial" and res.kind == "empty":
            res.kind = "dial"
    return res


# --- the stream --------------------------------------------------------------------------------
async def open_stream(stream_url: str, *, connect_url: str, auth_token: str,
                      main_auth_token: str | None = None,
                      headers: dict[str, str] | None = None, open_timeout: float = 10.0,
                      max_size: int = 2**22, ping_interval: float | None = 20.0) -> Any:
    """Open the `<Stream>` WebSocket at `connect_url` with the V3-signed upgrade Plivo sends
    (signed over `stream_url` in its http:// form). Returns the websockets client
    connection."""
    from websockets.asyncio.client import connect

    signed = signed_headers(auth_token, "GET", websocket_signed_url(stream_url), None,
                            main_auth_token=main_auth_token)
    signed.update(headers or {})
    return await connect(connect_url, additional_headers=signed, compression=None, proxy=None,
                         max_size=max_size, open_timeout=open_timeout,
                         ping_interval=ping_interval)


def start_message(*, call_uuid: str, stream_id: str, account_id: str,
                  media_format: dict[str, Any]) -> dict[str, Any]:
    """`start`, sent right after the stream opens (without its sequenceNumber)."""
    return {"event": "start",
            "start": {"callId": call_uuid, "streamId": stream_id, "accountId": account_id,
                      "tracks": ["inbound"], "mediaFormat": media_format},
            "extra_headers": ""}


def server_message(raw: str | bytes) -> tuple[str, dict[str, Any]] | None:
    """(event, message) of what the server sent on the stream (`playAudio`, `checkpoint`,
    `clearAudio`, `sendDTMF`), or None when it is not JSON with an `event`."""
    try:
        msg = json.loads(raw)
        return str(msg["event"]), msg
    except (ValueError, KeyError, TypeError):
        return None


def media_message(*, seq: int, stream_id: str, chunk: int, timestamp_ms: int,
                  payload_b64: str) -> str:
    """One 20 ms `media` frame of caller audio. Built as text: a load driver sends thousands
    a second."""
    return ('{"event":"media","sequenceNumber":' + str(seq) + ',"streamId":"' + stream_id
            + '","media":{"track":"inbound","timestamp":"' + str(timestamp_ms)
            + '","chunk":' + str(chunk) + ',"payload":"' + payload_b64
            + '"},"extra_headers":""}')


def played_stream(*, seq: int, stream_id: str, name: str) -> str:
    """The ack of a `checkpoint`, once the audio queued before it has played."""
    return json.dumps({"event": "playedStream", "sequenceNumber": seq, "streamId": stream_id,
                       "name": name})


def cleared_audio(*, seq: int, stream_id: str) -> str:
    """The answer to `clearAudio`, once the unplayed audio is dropped."""
    return json.dumps({"event": "clearedAudio", "sequenceNumber": seq, "streamId": stream_id})
