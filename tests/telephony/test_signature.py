"""V3/V2 signatures: Plivo's documented worked examples and agreement with the official SDK."""

from __future__ import annotations

import random
import string

import pytest
from plivo.utils import validate_signature
from plivo.utils.signature_v3 import validate_v3_signature

from app.telephony.plivo import signature as sig

TOKEN = "MjQ5ZjQ0ZGYtZjk2OC00NzRlLTk3MTEtZGVmYWNlMDAwMDAw"
NONCE = "12345678901234567890"
FORM = {
    "CallUUID": "a1b2c3d4-0000-4000-8000-000000000001",
    "From": "14155550100",
    "To": "14155550199",
    "Direction": "inbound",
    "CallStatus": "ringing",
    "Event": "StartApp",
}


def test_worked_example_post():
    url = "https://agent.example.com/plivo/answer"
    assert sig.v3_base_string("POST", url, FORM) == (
        "https://agent.example.com/plivo/answer?CallStatusringingCallUUIDa1b2c3d4-0000-4000-"
        "8000-000000000001DirectioninboundEventStartAppFrom14155550100To14155550199")
    assert sig.v3_signature(TOKEN, "POST", url, FORM, NONCE) == (
        "+mRCtegoCx8gnqjhwRKWuxkGO80iTN8wBmbTLq7jLls=")


def test_worked_example_post_with_query_and_get():
    base = sig.v3_base_string("POST", "https://agent.example.com/plivo/answer?tenant=acme", FORM)
    assert base.startswith("https://agent.example.com/plivo/answer?tenant=acme.CallStatusringing")
    query = "&".join(f"{k}={v}" for k, v in FORM.items())
    url = f"https://agent.example.com/plivo/answer?b=2&a=1&{query}"
    assert sig.v3_base_string("GET", url, None).endswith("To=14155550199&a=1&b=2")
    assert sig.v3_signature(TOKEN, "GET", url, None, NONCE) == (
        "/eizBt1j0aHpAzDcwG1ppd19Ughhm+mI6NUlQxskFpc=")


def test_worked_example_websocket_upgrade():
    url = sig.websocket_signed_url("wss://agent.example.com/plivo/stream?tenant=acme&call=abc")
    assert url == "http://agent.example.com/plivo/stream?tenant=acme&call=abc"
    assert sig.v3_base_string("GET", url) == (
        "http://agent.example.com/plivo/stream?call=abc&tenant=acme")
    assert sig.v3_signature(TOKEN, "GET", url, None, NONCE) == (
        "DR187UY6Nw2XhF8pvi45gKE2fKufnwck9fu5XvA3QZ4=")


def test_v2_official_vector():
    assert sig.v2_signature("my_auth_token", "https://answer.url", "12345") == (
        "ehV3IKhLysWBxC1sy8INm0qGoQYdYsHwuoKjsX7FsXc=")
    ok = sig.verify_v2({"X-Plivo-Signature-V2": "ehV3IKhLysWBxC1sy8INm0qGoQYdYsHwuoKjsX7FsXc=",
                        "X-Plivo-Signature-V2-Nonce": "12345"},
                       "https://answer.url", ["my_auth_token"])
    assert ok
    assert validate_signature("https://answer.url", "12345",
                              sig.v2_signature("my_auth_token", "https://answer.url", "12345"),
                              "my_auth_token")


def _rand(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, n)))


@pytest.mark.parametrize("seed", range(40))
def test_agrees_with_official_sdk_on_random_requests(seed):
    rng = random.Random(seed)
    chars = string.ascii_letters + string.digits + " +-_.:/@"
    params: dict[str, str | list[str]] = {}
    for _ in range(rng.randint(0, 6)):
        key = _rand(rng, string.ascii_letters, 8) or "K"
        params[key] = ([_rand(rng, chars, 6) for _ in range(rng.randint(1, 3))]
                       if rng.random() < 0.2 else _rand(rng, chars, 12))
    query = "&".join(f"{_rand(rng, string.ascii_lowercase, 4) or 'q'}={_rand(rng, 'abc123', 4)}"
                     for _ in range(rng.randint(0, 3)))
    url = "https://h.example.com:8443/plivo/answer" + (f"?{query}" if query else "")
    nonce = str(rng.randint(0, 10**20))
    token = _rand(rng, string.ascii_letters, 40) or "t"
    method = rng.choice(["GET", "POST"])
    ours = sig.v3_signature(token, method, url, params if method == "POST" else None, nonce)
    sdk_params = dict(params) if method == "POST" else None
    assert validate_v3_signature(method, url, nonce, token, ours, sdk_params)


def test_verify_accepts_comma_lists_and_main_account_header():
    url = "https://agent.example.com/plivo/answer"
    good = sig.v3_signature(TOKEN, "POST", url, FORM, NONCE)
    other = sig.v3_signature("another-token", "POST", url, FORM, NONCE)
    h = {"X-Plivo-Signature-V3": f"{other}, {good}", "X-Plivo-Signature-V3-Nonce": NONCE}
    assert sig.verify_v3(h, "POST", url, FORM, [TOKEN])
    # subaccount number: -V3 keyed with a token we don't have, -Ma-V3 with our main token
    h = {"X-Plivo-Signature-V3": other, "X-Plivo-Signature-Ma-V3": good,
         "X-Plivo-Signature-V3-Nonce": NONCE}
    check = sig.verify_v3(h, "POST", url, FORM, ["sub-token-we-lack", TOKEN])
    assert check.ok and check.reason == sig.HEADER_MA_V3


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing X-Plivo-Signature-V3"),
        ({"X-Plivo-Signature-V3": "abc"}, "missing X-Plivo-Signature-V3-Nonce"),
        ({"X-Plivo-Signature-V3": "abc=", "X-Plivo-Signature-V3-Nonce": "1"}, "mismatch"),
    ],
)
def test_verify_rejects_with_reason(headers, reason):
    check = sig.verify_v3(headers, "POST", "https://x/plivo/answer", FORM, [TOKEN])
    assert not check and reason in check.reason
    assert TOKEN not in check.reason


def test_replay_to_another_url_or_tampered_body_fails():
    url = "https://agent.example.com/plivo/answer"
    h = sig.sign_v3_headers(TOKEN, "POST", url, FORM, NONCE)
    assert sig.verify_v3(h, "POST", url, FORM, [TOKEN])
    assert not sig.verify_v3(h, "POST", "https://agent.example.com/plivo/hangup", FORM, [TOKEN])
    assert not sig.verify_v3(h, "POST", url, {**FORM, "To": "14155550000"}, [TOKEN])
    assert not sig.verify_v3(h, "POST", url + "?x=1", FORM, [TOKEN])
