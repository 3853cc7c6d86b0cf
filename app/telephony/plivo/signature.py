"""Plivo webhook signatures (V3, with V2 for older callbacks).

V3 signs the URL Plivo called plus the request parameters and a nonce:
    base64(HMAC-SHA256(auth_token, base_string(method, url, params) + "." + nonce))
`X-Plivo-Signature-V3` may carry several comma-separated signatures (one per active token) and
`X-Plivo-Signature-Ma-V3` is the same computation keyed with the main-account token. The base
string matches the official SDK's `validate_v3_signature` byte for byte (tests check this).

Unlike the SDK we compare in constant time and check every candidate without short-circuiting.
V2 (URL + nonce only, body unsigned) is provided for legacy products; routes accept V3 only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit, urlunsplit

HEADER_V3 = "X-Plivo-Signature-V3"
HEADER_MA_V3 = "X-Plivo-Signature-Ma-V3"
HEADER_V3_NONCE = "X-Plivo-Signature-V3-Nonce"
HEADER_V2 = "X-Plivo-Signature-V2"
HEADER_MA_V2 = "X-Plivo-Signature-Ma-V2"
HEADER_V2_NONCE = "X-Plivo-Signature-V2-Nonce"

ParamValue = str | Sequence[str]
Params = Mapping[str, ParamValue]


def _as_list(value: ParamValue) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _merged(params: Params | None, query: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {k: _as_list(v) for k, v in (params or {}).items()}
    # The SDK does params.update(parse_qs(query)): a query key replaces a same-named param.
    out.update(parse_qs(query, keep_blank_values=True))
    return out


def _sorted_query(params: Mapping[str, list[str]]) -> str:
    # Keys sorted case-sensitively; values of a repeated key sorted; nothing URL-encoded.
    return "&".join(f"{k}={v}" for k in sorted(params) for v in sorted(params[k]))


def _sorted_body(params: Mapping[str, list[str]]) -> str:
    return "".join(f"{k}{v}" for k in sorted(params) for v in sorted(params[k]))


def _bare_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), parts.query


def v3_base_string(method: str, url: str, params: Params | None = None) -> str:
    """The string Plivo signs for a request to `url` with decoded `params`."""
    bare, query = _bare_url(url)
    if method.upper() == "GET":
        q = _sorted_query(_merged(params, query))
        return f"{bare}?{q}" if q else bare
    body = {k: _as_list(v) for k, v in (params or {}).items()}
    q = _sorted_query(_merged(None, query))
    if not body:
        return f"{bare}?{q}" if q else bare
    return f"{bare}?{q}{'.' if q else ''}{_sorted_body(body)}"


def _b64_hmac(key: str, msg: str) -> str:
    digest = hmac.new(key.encode(), msg.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def v3_signature(auth_token: str, method: str, url: str, params: Params | None,
                 nonce: str) -> str:
    return _b64_hmac(auth_token, f"{v3_base_string(method, url, params)}.{nonce}")


def v2_signature(auth_token: str, url: str, nonce: str) -> str:
    bare, _ = _bare_url(url)
    return _b64_hmac(auth_token, bare + nonce)


def _any_match(expected: Iterable[str], header: str) -> bool:
    offered = [s.strip() for s in header.split(",") if s.strip()]
    ok = False
    for exp in expected:
        for got in offered:
            # no early exit: timing must not reveal which candidate matched
            ok |= hmac.compare_digest(exp.encode(), got.encode())
    return ok


def websocket_signed_url(stream_url: str) -> str:
    """The URL a stream upgrade is signed over: Plivo signs it with ws(s):// replaced by
    http://."""
    parts = urlsplit(stream_url)
    if parts.scheme in ("ws", "wss", "https"):
        parts = parts._replace(scheme="http")
    return urlunsplit(parts)


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    ok: bool
    reason: str  # why it failed (or which header matched); safe to log, holds no secret

    def __bool__(self) -> bool:
        return self.ok


def verify_v3(
    headers: Mapping[str, str],
    method: str,
    url: str,
    params: Params | None,
    tokens: Sequence[str],
) -> SignatureCheck:
    """Check `X-Plivo-Signature-V3` and `-Ma-V3` against every configured token.

    `tokens` holds the account token and, if set, the main-account token. Either header may be
    keyed with either (a main account's own numbers sign `-V3` with the main token).
    """
    h = {k.lower(): v for k, v in headers.items()}
    v3 = h.get(HEADER_V3.lower(), "")
    ma = h.get(HEADER_MA_V3.lower(), "")
    nonce = h.get(HEADER_V3_NONCE.lower(), "")
    if not v3 and not ma:
        return SignatureCheck(False, f"missing {HEADER_V3} header")
    if not nonce:
        return SignatureCheck(False, f"missing {HEADER_V3_NONCE} header")
    tokens = [t for t in tokens if t]
    if not tokens:
        return SignatureCheck(False, "no Plivo auth token configured (plivo.auth_token)")
    expected = [v3_signature(t, method, url, params, nonce) for t in tokens]
    hit_v3 = bool(v3) and _any_match(expected, v3)
    hit_ma = bool(ma) and _any_match(expected, ma)
    if hit_v3 or hit_ma:
        return SignatureCheck(True, HEADER_V3 if hit_v3 else HEADER_MA_V3)
    return SignatureCheck(
        False, f"signature mismatch for {method.upper()} {_bare_url(url)[0]} "
               f"(check server.public_url and plivo.auth_token)")


def verify_v2(headers: Mapping[str, str], url: str, tokens: Sequence[str]) -> SignatureCheck:
    """Legacy V2 check (URL + nonce; the body is not covered)."""
    h = {k.lower(): v for k, v in headers.items()}
    v2 = h.get(HEADER_V2.lower(), "")
    ma = h.get(HEADER_MA_V2.lower(), "")
    nonce = h.get(HEADER_V2_NONCE.lower(), "")
    if not (v2 or ma) or not nonce:
        return SignatureCheck(False, f"missing {HEADER_V2} or its nonce")
    expected = [v2_signature(t, url, nonce) for t in tokens if t]
    if (v2 and _any_match(expected, v2)) or (ma and _any_match(expected, ma)):
        return SignatureCheck(True, HEADER_V2)
    return SignatureCheck(False, "V2 signature mismatch")


def sign_v3_headers(auth_token: str, method: str, url: str, params: Params | None,
                    nonce: str, main_auth_token: str | None = None) -> dict[str, str]:
    """The headers Plivo would send (used by the simulator, which plays Plivo)."""
    headers = {
        HEADER_V3: v3_signature(auth_token, method, url, params, nonce),
        HEADER_V3_NONCE: nonce,
    }
    if main_auth_token:
        headers[HEADER_MA_V3] = v3_signature(main_auth_token, method, url, params, nonce)
    return headers
