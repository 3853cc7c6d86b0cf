"""Logging: stdlib, text or JSON lines, request ids, and redaction of anything secret-looking.

Modules log through `logging.getLogger(__name__)`. `configure_logging` installs one handler on
the root logger carrying two filters: one that stamps the current request id on every record and
one that masks secrets (Bearer tokens, our API keys, configured secret values and credential
values registered at run time) before anything is formatted.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import IO, Any

from app.config import Settings

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "phonebooth_request_id", default=None
)

MASK = "[REDACTED]"
REQUEST_ID_HEADER = "X-Request-ID"
_HANDLER_MARK = "_phonebooth_handler"

_PATTERNS = [
    # Authorization headers, whatever the token looks like.
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]{6,}"),
    re.compile(r"\bBasic\s+[A-Za-z0-9+/=]{12,}"),
    # Our own API keys.
    re.compile(r"\bpb_[A-Za-z0-9_\-]{8,}"),
    # Common vendor key shapes (OpenAI/Anthropic "sk-...", ElevenLabs "xi-...").
    re.compile(r"\b(sk|xi)-[A-Za-z0-9_\-]{16,}"),
    # key=value / "key": "value" pairs whose name says secret.
    re.compile(
        r"(?i)((?:api[_-]?key|token|secret|password|auth[_-]?token|authorization)"
        r"[\"']?\s*[:=]\s*[\"']?)([^\s\"',;&]{4,})"
    ),
]


class Redactor:
    """Masks secret-looking text. Thread-safe; known secret values can be added at run time."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()

    def add(self, value: str | None) -> None:
        # Very short values would mask ordinary words; such values are not real secrets anyway.
        if value and len(value) >= 6:
            with self._lock:
                self._values.add(value)

    def redact(self, text: str) -> str:
        with self._lock:
            values = sorted(self._values, key=len, reverse=True)
        for v in values:
            if v in text:
                text = text.replace(v, MASK)
        for i, pat in enumerate(_PATTERNS):
            if i == len(_PATTERNS) - 1:
                text = pat.sub(lambda m: m.group(1) + MASK, text)
            else:
                text = pat.sub(MASK, text)
        return text


redactor = Redactor()


def register_secret(value: str | None) -> None:
    """Never log `value` (e.g. a credential just decrypted or stored)."""
    redactor.add(value)


class RedactionFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = f"{record.msg!r} {record.args!r}"
        record.msg = redactor.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.exc_text:
            record.exc_text = redactor.redact(record.exc_text)
        # The formatter would re-render exc_info; the redacted exc_text is used instead.
        record.exc_info = None
        if record.stack_info:
            record.stack_info = redactor.redact(record.stack_info)
        return True


# Paths that container health checks and load balancers poll every few seconds.
HEALTH_PROBE_PATHS = frozenset({"/healthz", "/readyz"})


class HealthProbeFilter(logging.Filter):
    """Drops uvicorn's access-log line for a successful health probe: Docker's HEALTHCHECK polls
    /readyz every 15 s, which would otherwise scroll `docker compose up` forever. A failing probe
    (503 while draining or not ready) is still logged: it says something."""

    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn.access records carry (client, method, path, http_version, status) as args.
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            path, status = str(args[2]).split("?", 1)[0], args[4]
            if path in HEALTH_PROBE_PATHS and isinstance(status, int) and status < 400:
                return False
        return True


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        # Set by the request-id filter on records logged while a request is handled.
        request_id = getattr(record, "request_id", None)
        if request_id:
            out["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_text:
            out["exc"] = record.exc_text
        return redactor.redact(json.dumps(out, default=str))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s%(rid)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", None)
        record.rid = f" [{rid}]" if rid else ""
        return super().format(record)


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """Install (or replace) Phonebooth's root handler. Other handlers (pytest's) are kept."""
    for value in (
        settings.security.secret_key,
        settings.security.admin_api_key,
        settings.plivo.auth_token,
        settings.plivo.main_auth_token,
    ):
        if value is not None:
            register_secret(value.get_secret_value())
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_MARK, False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactionFilter())
    handler.setFormatter(
        JsonFormatter() if settings.server.log_format == "json" else TextFormatter()
    )
    root.addHandler(handler)
    root.setLevel(settings.server.log_level.upper())
    # Library chatter that would drown call logs at info level.
    for noisy in ("sqlalchemy.engine", "aiosqlite", "asyncio", "httpx", "httpcore", "httpx2"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    if settings.database.echo:
        logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, HealthProbeFilter) for f in access.filters):
        access.addFilter(HealthProbeFilter())
    return handler


# --- request ids ---------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]
_VALID_RID = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")


class RequestIdMiddleware:
    """Takes X-Request-ID from the request (or makes one), exposes it to logs through a context
    variable and to handlers as `request.state.request_id`, and echoes it on the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        rid = incoming if incoming and _VALID_RID.match(incoming) else secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", rid.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
