"""The shared cloud plumbing: error-body parsing, Retry-After, secret redaction, SSE parsing."""

from __future__ import annotations

import logging
import re
from email.utils import formatdate

import httpx
import pytest

from providers.base import ProviderError, SecretRef
from providers.http import (
    RetryPolicy,
    _RedactingLogger,
    http_error,
    iter_sse,
    redact,
    remember_secret,
    resolve_api_key,
    retry_after_s,
    vendor_message,
)
from tests.fakes.harness import make_context


@pytest.mark.parametrize(("body", "expected"), [
    ({"error": {"message": "Rate limit reached", "type": "requests",
                "code": "rate_limit_exceeded"}}, ("Rate limit reached", "rate_limit_exceeded")),
    ({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
     ("Overloaded", "overloaded_error")),
    ({"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials.", "request_id": "r"},
     ("Invalid credentials.", "INVALID_AUTH")),
    ({"category": "INVALID_AUTH", "message": "Invalid credentials."},
     ("Invalid credentials.", "INVALID_AUTH")),
    ({"detail": {"status": "invalid_api_key", "message": "Invalid API key"}},
     ("Invalid API key", "invalid_api_key")),
    ({"message": "Could not parse input message", "error": "invalid_input_message",
      "code": 1008}, ("Could not parse input message", "invalid_input_message")),
    ({"error": "Invalid API key"}, ("Invalid API key", None)),
    ({"detail": [{"loc": ["body", "voice"], "msg": "field required"}]},
     ("voice: field required", "validation")),
    (b"upstream connect error", ("upstream connect error", None)),
])
def test_vendor_message_shapes(body: object, expected: tuple[str | None, str | None]) -> None:
    assert vendor_message(body) == expected  # type: ignore[arg-type]


def test_http_error_retryable_means_another_provider_may_work() -> None:
    assert http_error("x", 401, b'{"error": {"message": "bad key"}}').retryable
    assert http_error("x", 503, b"").retryable
    bad = http_error("x", 400, b'{"error": {"message": "messages: required"}}')
    assert not bad.retryable
    assert bad.status == 400 and "messages: required" in bad.message


def test_retry_after_forms() -> None:
    assert retry_after_s({"retry-after": "1.5"}) == 1.5
    assert retry_after_s({"retry-after-ms": "250"}) == 0.25
    assert retry_after_s({}) is None
    date = formatdate(usegmt=True)  # "now" as an HTTP date → no wait
    assert retry_after_s({"retry-after": date}) == pytest.approx(0, abs=1.5)
    policy = RetryPolicy(max_retry_wait_s=2.0)
    assert policy.delay(1, {"retry-after": "30"}) is None  # too long: fail over instead
    assert policy.delay(1, {"retry-after": "0.5"}) == 0.5
    assert 0 < policy.delay(3, {}) <= policy.max_delay_s  # type: ignore[operator]


async def test_secret_resolution_and_redaction() -> None:
    ctx, _ = make_context({"K": "sk-live-supersecretvalue"})
    key = await resolve_api_key(ctx, SecretRef(env="K"), "x")
    assert key == "sk-live-supersecretvalue"
    assert redact("Authorization: Bearer sk-live-supersecretvalue") == "Authorization: Bearer ***"
    with pytest.raises(ProviderError) as exc:
        await resolve_api_key(ctx, SecretRef(env="MISSING"), "x")
    assert exc.value.code == "missing_credential" and "MISSING" not in str(exc.value)
    with pytest.raises(ProviderError):
        await resolve_api_key(ctx, None, "x")
    assert await resolve_api_key(ctx, None, "x", required=False) is None


def test_redacting_logger_formats_then_redacts(caplog: pytest.LogCaptureFixture) -> None:
    remember_secret("tok-abcdefgh12345")
    log = _RedactingLogger(logging.getLogger("websockets.client"), {})
    with caplog.at_level(logging.DEBUG, logger="websockets.client"):
        log.debug("> %s: %s", "Authorization", "Token tok-abcdefgh12345")
    assert "tok-abcdefgh12345" not in caplog.text
    # (`Token` itself may be masked too, by the service's own log redaction when an app was
    # set up earlier in the process.)
    assert re.search(r"> Authorization: (Token|\[REDACTED\]) \*\*\*", caplog.text)


async def test_iter_sse_parses_events_comments_and_multiline_data() -> None:
    raw = (b": keep-alive\n\nevent: ping\ndata: {}\n\n"
           b"data: line one\ndata: line two\n\nevent: message_stop\r\ndata: {\"a\":1}\r\n\r\n")
    response = httpx.Response(200, content=raw)
    got = [item async for item in iter_sse(response)]
    assert got == [("ping", "{}"), ("message", "line one\nline two"),
                   ("message_stop", '{"a":1}')]
