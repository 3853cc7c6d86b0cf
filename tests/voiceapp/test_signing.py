"""The customer WebSocket connection signature (app.events.signing), both sides."""

from __future__ import annotations

import time

import pytest

from app.events.signing import (
    SESSION_ID_HEADER,
    SIGNATURE_HEADER,
    URL_HEADER,
    SignatureError,
    connection_signature_message,
    sign,
    sign_connection,
    url_path_and_query,
    verify_connection,
)

SECRET = "whsec_test_0123"
URL = "wss://tools.example.com/voice?team=billing"


def test_message_is_session_id_newline_url() -> None:
    assert connection_signature_message("sess_1", URL) == f"sess_1\n{URL}".encode()


def test_sign_connection_headers() -> None:
    headers = sign_connection(SECRET, "sess_1", URL, timestamp=1700000000)
    assert headers[SESSION_ID_HEADER] == "sess_1"
    assert headers[URL_HEADER] == URL
    assert headers[SIGNATURE_HEADER] == sign(
        SECRET, f"sess_1\n{URL}".encode(), timestamp=1700000000)
    assert headers[SIGNATURE_HEADER].startswith("t=1700000000,v1=")


def test_verify_accepts_the_signed_path() -> None:
    headers = sign_connection(SECRET, "sess_1", URL)
    assert verify_connection(SECRET, headers, "/voice?team=billing") == "sess_1"


def test_verify_is_case_insensitive_on_header_names() -> None:
    headers = {k.lower(): v for k, v in sign_connection(SECRET, "sess_1", URL).items()}
    assert verify_connection(SECRET, headers, "/voice?team=billing") == "sess_1"


def test_behind_a_proxy_only_path_and_query_must_match() -> None:
    # Phonebooth dialled the public URL; the app sees the request on its own host and port.
    headers = {**sign_connection(SECRET, "s", "wss://public.example.com/a/b"),
               "Host": "10.0.0.5:9000"}
    assert verify_connection(SECRET, headers, "/a/b") == "s"


@pytest.mark.parametrize("target", ["/voice", "/voice?team=sales", "/other?team=billing", "/"])
def test_verify_refuses_another_path_or_query(target: str) -> None:
    headers = sign_connection(SECRET, "sess_1", URL)
    with pytest.raises(SignatureError, match="another path"):
        verify_connection(SECRET, headers, target)


def test_verify_refuses_wrong_secret() -> None:
    headers = sign_connection("whsec_other", "sess_1", URL)
    with pytest.raises(SignatureError, match="mismatch"):
        verify_connection(SECRET, headers, "/voice?team=billing")


def test_verify_refuses_a_forged_url_or_session_id() -> None:
    headers = sign_connection(SECRET, "sess_1", "wss://a.example.com/voice")
    with pytest.raises(SignatureError, match="mismatch"):
        verify_connection(SECRET, {**headers, URL_HEADER: "wss://b.example.com/voice"}, "/voice")
    with pytest.raises(SignatureError, match="mismatch"):
        verify_connection(SECRET, {**headers, SESSION_ID_HEADER: "sess_2"}, "/voice")


def test_verify_refuses_stale_and_future_timestamps() -> None:
    now = int(time.time())
    for t in (now - 301, now + 301):
        headers = sign_connection(SECRET, "sess_1", URL, timestamp=t)
        with pytest.raises(SignatureError, match="tolerance"):
            verify_connection(SECRET, headers, "/voice?team=billing")
    headers = sign_connection(SECRET, "sess_1", URL, timestamp=now - 301)
    assert verify_connection(SECRET, headers, "/voice?team=billing", tolerance_s=600) == "sess_1"
    assert verify_connection(SECRET, headers, "/voice?team=billing", now=now - 300) == "sess_1"


@pytest.mark.parametrize("missing", [SIGNATURE_HEADER, SESSION_ID_HEADER])
def test_verify_refuses_missing_headers(missing: str) -> None:
    headers = sign_connection(SECRET, "sess_1", URL)
    del headers[missing]
    with pytest.raises(SignatureError, match="missing"):
        verify_connection(SECRET, headers, "/voice?team=billing")


def test_without_the_url_header_host_is_tried_with_both_schemes() -> None:
    for scheme in ("ws", "wss"):
        headers = sign_connection(SECRET, "s", f"{scheme}://h.example.com:9000/v")
        del headers[URL_HEADER]
        assert verify_connection(SECRET, {**headers, "Host": "h.example.com:9000"}, "/v") == "s"
        with pytest.raises(SignatureError, match="mismatch"):
            verify_connection(SECRET, {**headers, "Host": "other:9000"}, "/v")
    headers = sign_connection(SECRET, "s", "ws://h/v")
    del headers[URL_HEADER]
    with pytest.raises(SignatureError, match="Host"):
        verify_connection(SECRET, headers, "/v")


@pytest.mark.parametrize(("url", "target"), [
    ("wss://h.example.com", "/"),
    ("wss://h.example.com/", "/"),
    ("ws://h:1/a/b?x=1&y=2", "/a/b?x=1&y=2"),
    ("ws://h/a%20b", "/a%20b"),
])
def test_url_path_and_query(url: str, target: str) -> None:
    assert url_path_and_query(url) == target
