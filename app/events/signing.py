"""HMAC-SHA256 signatures on every request Phonebooth sends out (event webhooks and tool webhooks).

Header `X-Phonebooth-Signature: t=<unix seconds>,v1=<hex>` where
`hex = HMAC_SHA256(key=signing_secret.encode(), msg=f"{t}.".encode() + raw_body)`.

The signing secret is derived from `security.secret_key` (HKDF-SHA256, purpose
"phonebooth/webhook-signing/v1"), so operators never hand out the master key itself:
`signing_secret = "whsec_" + HKDF(secret_key, info=purpose).hex()`. Print it for the server's
configuration with `python -m app.events.signing` (same config file / environment as the server)
and configure it at the receiver, which verifies like this (any language with HMAC works):

    parts = dict(p.split("=", 1) for p in header.split(","))   # {"t": ..., "v1": ...}
    mac = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, "sha256").hexdigest()
    ok = hmac.compare_digest(mac, parts["v1"]) and abs(time.time() - int(parts["t"])) <= 300

The timestamp bounds replays (default window 300 s); `X-Phonebooth-Event-Id` is the idempotency key
of event deliveries (the same on every retry), so receivers should ignore ids they already saw.

Customer WebSocket connections (docs/customer-websocket.md) are signed the same way, with
`connection_signature_message(session_id, url)` (`f"{session_id}\n{url}"`) as the body, on the
upgrade request: `sign_connection` builds the headers Phonebooth sends, `verify_connection` is the
app's check (`app.voiceapp` uses it). The app cannot know the exact URL Phonebooth dialled (a
proxy or tunnel may change scheme, host and port), so the URL that was signed travels in
`X-Phonebooth-Url` and the app accepts it when its path and query are the ones the request
arrived on: the MAC proves Phonebooth chose that URL, the path check that it was meant for this
endpoint (a receiver without that header tries `ws://` and `wss://` on the `Host` header).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

from app.security.crypto import SecretBox, derive_key

SIGNATURE_HEADER = "X-Phonebooth-Signature"
EVENT_ID_HEADER = "X-Phonebooth-Event-Id"
EVENT_TYPE_HEADER = "X-Phonebooth-Event-Type"
SESSION_ID_HEADER = "X-Phonebooth-Session-Id"
URL_HEADER = "X-Phonebooth-Url"
DEFAULT_TOLERANCE_S = 300
SIGNING_PURPOSE = "phonebooth/webhook-signing/v1"


class SignatureError(Exception):
    """The request's signature is missing, malformed, stale or wrong."""


def derive_signing_secret(secret_key: str | bytes) -> str:
    """The webhook signing secret for a server `security.secret_key`."""
    return "whsec_" + derive_key(secret_key, SIGNING_PURPOSE).hex()


def signing_secret_from_box(box: SecretBox) -> str:
    """The same secret, from the app's SecretBox (which holds the server's secret key)."""
    return "whsec_" + box.derive(SIGNING_PURPOSE).hex()


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, *, timestamp: int | None = None) -> str:
    """The value of the signature header for `body`."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_mac(secret, t, body)}"


def signature_headers(secret: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
    return {SIGNATURE_HEADER: sign(secret, body, timestamp=timestamp)}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lname = name.lower()
    for k, v in headers.items():
        if k.lower() == lname:
            return v
    return None


def verify_signature(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> int:
    """Check a signed request; return its timestamp or raise SignatureError.

    Accepts several `v1=` entries (sent while a secret is being rotated); any match is enough.
    """
    value = _header(headers, SIGNATURE_HEADER)
    if not value:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in value.split(","):
        k, sep, v = part.strip().partition("=")
        if not sep:
            continue
        if k == "t":
            try:
                timestamp = int(v)
            except ValueError:
                raise SignatureError("malformed timestamp") from None
        elif k == "v1":
            candidates.append(v)
    if timestamp is None or not candidates:
        raise SignatureError("malformed signature header")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureError("timestamp outside the tolerance window")
    expected = _mac(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise SignatureError("signature mismatch")
    return timestamp


def connection_signature_message(session_id: str, url: str) -> bytes:
    """What a customer WebSocket connection's signature covers (its "body")."""
    return f"{session_id}\n{url}".encode()


def sign_connection(
    secret: str, session_id: str, url: str, timestamp: int | None = None
) -> dict[str, str]:
    """The headers Phonebooth adds to the upgrade request of a customer WebSocket at `url`."""
    return {
        SESSION_ID_HEADER: session_id,
        URL_HEADER: url,
        SIGNATURE_HEADER: sign(secret, connection_signature_message(session_id, url),
                               timestamp=timestamp),
    }


def url_path_and_query(url: str) -> str:
    """The request target a client sends for `url`: its path ("/" when empty) and query."""
    parts = urlsplit(url)
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path


def verify_connection(
    secret: str,
    headers: Mapping[str, str],
    path_and_query: str,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    *,
    now: float | None = None,
) -> str:
    """Check a customer WebSocket upgrade request; return its session id or raise SignatureError.

    `path_and_query` is the request target the connection arrived on (`/voice?x=1`). The signed
    URL is taken from `X-Phonebooth-Url` and must have that same path and query; without the
    header, `ws://` and `wss://` on the `Host` header are tried.
    """
    session_id = _header(headers, SESSION_ID_HEADER)
    if not session_id:
        raise SignatureError(f"missing {SESSION_ID_HEADER} header")
    target = path_and_query or "/"
    signed_url = _header(headers, URL_HEADER)
    if signed_url:
        if url_path_and_query(signed_url) != target:
            raise SignatureError("the signed URL is for another path")
        candidates = [signed_url]
    else:
        host = _header(headers, "Host")
        if not host:
            raise SignatureError(f"missing {URL_HEADER} and Host headers")
        candidates = [f"{scheme}://{host}{target}" for scheme in ("wss", "ws")]
    for url in candidates[:-1]:
        try:
            verify_signature(secret, headers, connection_signature_message(session_id, url),
                             tolerance_s=tolerance_s, now=now)
            return session_id
        except SignatureError:
            pass
    verify_signature(secret, headers, connection_signature_message(session_id, candidates[-1]),
                     tolerance_s=tolerance_s, now=now)
    return session_id


def _print_configured_secret() -> None:
    """`python -m app.events.signing`: the signing secret of the configured server."""
    from app.config import ConfigError, load_settings
    from app.security.secret_key import load_or_create_secret_key

    try:
        settings = load_settings()
        print(derive_signing_secret(load_or_create_secret_key(settings.security)))
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None


if __name__ == "__main__":
    _print_configured_secret()
