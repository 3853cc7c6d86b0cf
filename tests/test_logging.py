"""Log output: text/JSON formats, request ids, and secrets masked wherever they appear."""

from __future__ import annotations

import io
import json
import logging

import pytest

from app.config import Settings
from app.logging_setup import (
    MASK,
    configure_logging,
    redactor,
    register_secret,
    request_id_var,
)


@pytest.fixture
def capture():
    def make(**server) -> io.StringIO:
        stream = io.StringIO()
        settings = Settings(server=server, security={"admin_api_key": "configured-admin-key-xyz"})
        configure_logging(settings, stream=stream)
        return stream

    root = logging.getLogger()
    level = root.level
    yield make
    root.setLevel(level)
    for h in list(root.handlers):
        if getattr(h, "_phonebooth_handler", False):
            root.removeHandler(h)


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer abcdef0123456789",
        "key pb_AbCdEf0123456789_-xyz used",
        "openai said sk-proj-0123456789abcdefghij is invalid",
        'payload {"api_key": "hunter2hunter2"}',
        "wss://host/plivo/stream/1?token=abcd1234efgh",
        "Basic dXNlcm5hbWU6cGFzc3dvcmQ=",
    ],
)
def test_redaction_patterns(text: str) -> None:
    out = redactor.redact(text)
    assert MASK in out
    for secret in ("abcdef0123456789", "pb_AbCdEf", "sk-proj-0123", "hunter2", "abcd1234",
                   "dXNlcm5hbWU6"):
        assert secret not in out


def test_ordinary_text_is_untouched() -> None:
    text = "max_tokens: 128; basic plan; user said okay; token count 5"
    assert redactor.redact(text) == text


def test_text_format_masks_args_and_exceptions(capture) -> None:
    stream = capture(log_format="text", log_level="debug")
    register_secret("my-registered-credential")
    log = logging.getLogger("app.test")
    log.info("using %s and %s", "my-registered-credential", "configured-admin-key-xyz")
    try:
        raise ValueError("bad token=supersecretvalue")
    except ValueError:
        log.exception("failed")
    out = stream.getvalue()
    assert "my-registered-credential" not in out
    assert "configured-admin-key-xyz" not in out
    assert "supersecretvalue" not in out
    assert "ValueError" in out and "Traceback" in out


def test_json_format_with_request_id(capture) -> None:
    stream = capture(log_format="json")
    token = request_id_var.set("rid-42")
    try:
        logging.getLogger("app.calls").warning("call %s slow", "c1", extra={"session_id": "s1"})
    finally:
        request_id_var.reset(token)
    line = json.loads(stream.getvalue().strip())
    assert line["msg"] == "call c1 slow"
    assert line["level"] == "warning"
    assert line["logger"] == "app.calls"
    assert line["request_id"] == "rid-42"
    assert line["session_id"] == "s1"


def test_level_filters(capture) -> None:
    stream = capture(log_level="warning")
    logging.getLogger("app.x").info("hidden")
    logging.getLogger("app.x").warning("shown")
    assert "hidden" not in stream.getvalue() and "shown" in stream.getvalue()


async def test_successful_health_probes_stay_out_of_the_access_log(live_server, capture) -> None:
    import httpx

    stream = capture(log_format="json")
    # An earlier server in the same test process may have left uvicorn's access logger muted.
    access_logger = logging.getLogger("uvicorn.access")
    access_logger.disabled, access_logger.propagate = False, True
    access_logger.setLevel(logging.INFO)
    async with httpx.AsyncClient(base_url=live_server.base_url) as c:
        assert (await c.get("/readyz")).status_code == 200
        assert (await c.get("/healthz?probe=1")).status_code == 200
        assert (await c.get("/v1/agents")).status_code == 401
        live_server.state.draining = True
        try:
            assert (await c.get("/readyz")).status_code == 503
        finally:
            live_server.state.draining = False
    access = [json.loads(line)["msg"] for line in stream.getvalue().splitlines()
              if json.loads(line)["logger"] == "uvicorn.access"]
    assert any('"GET /v1/agents HTTP/1.1" 401' in m for m in access), access
    assert any('"GET /readyz HTTP/1.1" 503' in m for m in access), access
    assert not any(" 200" in m for m in access), access
