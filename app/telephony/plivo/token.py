"""Short-lived stream tokens: `?token=` on the `<Stream>` URL we hand Plivo.

The token binds the WebSocket to one session and one CallUUID until an expiry. It is keyed by
a key derived from the server's secret key for this purpose only (`TOKEN_KEY_PURPOSE`), and is
checked in addition to Plivo's V3 signature on the upgrade, so a leaked stream URL is useless
after a couple of minutes and useless for any other call.

Format: "<expiry unix s>.<base64url HMAC-SHA256(key, 'stream|session|call_uuid|expiry')>".
The CallUUID is not in the token; the verifier takes it from the session row.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

TOKEN_KEY_PURPOSE = "phonebooth/plivo-stream-token/v1"


class InvalidToken(Exception):
    """The token is missing, malformed, expired or not for this session/call."""


def _mac(key: bytes, session_id: str, call_uuid: str, expiry: int) -> str:
    msg = f"stream|{session_id}|{call_uuid}|{expiry}".encode()
    mac = hmac.new(key, msg, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def make_stream_token(key: bytes, session_id: str, call_uuid: str, ttl_s: float,
                      now: float | None = None) -> str:
    expiry = int((time.time() if now is None else now) + ttl_s)
    return f"{expiry}.{_mac(key, session_id, call_uuid, expiry)}"


def verify_stream_token(key: bytes, token: str | None, session_id: str, call_uuid: str,
                        now: float | None = None) -> int:
    """Return the token's expiry, or raise InvalidToken saying why."""
    if not token:
        raise InvalidToken("missing stream token")
    head, sep, mac = token.partition(".")
    if not sep or not head.isdigit() or not mac:
        raise InvalidToken("malformed stream token")
    expiry = int(head)
    expected = _mac(key, session_id, call_uuid, expiry)
    # Compare before looking at expiry so both failures cost the same.
    if not hmac.compare_digest(expected.encode(), mac.encode()):
        raise InvalidToken("stream token does not match this session/call")
    if (time.time() if now is None else now) > expiry:
        raise InvalidToken("stream token expired")
    return expiry
