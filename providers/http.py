"""Shared plumbing for the cloud adapters.

- One pooled `httpx.AsyncClient` per process and event loop (kept in `ctx.shared`), so TLS
  connections to a vendor are reused across calls: a warm connection saves a handshake per turn.
- Retries happen only *before the first byte*: on connect failures and on 429/5xx answers, with
  jittered backoff, honouring `Retry-After`/`retry-after-ms`. A Retry-After longer than the
  adapter's `max_retry_wait_s` fails at once instead — on a live call switching to the fallback
  provider beats waiting. Once data flows nothing is retried here; the fallback wrapper decides.
- Vendor failures become `ProviderError` carrying the vendor's own message (their JSON error
  bodies are parsed). Two notions of "retry" are kept apart: *this module* repeats a request to
  the same vendor only for 429/5xx/connect failures; `ProviderError.retryable` tells the fallback
  wrapper whether *another* provider may succeed, which is False only when the request itself is
  at fault (400/413/415/422) — a 401 here still lets the next provider, with its own key, answer.
- API keys come only from `SecretRef`s resolved through the host. Every resolved key is
  remembered so it can be redacted from error messages and from the `websockets` debug log, which
  otherwise prints handshake headers (and thus `Authorization`) verbatim. Keys never go into URLs.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import Field

from providers.base import ProviderConfig, ProviderContext, ProviderError, SecretRef

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection
    from websockets.exceptions import ConnectionClosed

log = logging.getLogger(__name__)

# Statuses worth repeating the same request to the same vendor (before the first byte).
# 529 is Anthropic's "overloaded".
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
# Statuses that blame the request itself, so no provider can do better: `ProviderError.retryable`
# is False and the fallback wrapper surfaces them instead of switching. Everything else, auth
# failures included (401/403: *this* vendor's key is bad, the next provider has its own), leaves
# `retryable` True so the fallback chain moves on.
REQUEST_FAULT_STATUS = frozenset({400, 413, 415, 422})


# ---------------------------------------------------------------------------------------------
# Config shared by every cloud adapter
# ---------------------------------------------------------------------------------------------


class CloudConfig(ProviderConfig):
    """Fields every cloud adapter accepts; adapters subclass and add vendor options."""

    api_key: SecretRef | None = None
    connect_timeout_s: float = Field(3.0, gt=0, le=60)
    # Longest silence tolerated while waiting for the response or between streamed chunks.
    read_timeout_s: float = Field(10.0, gt=0, le=300)
    # Extra attempts before the first byte (connect errors, 429, 5xx).
    max_retries: int = Field(2, ge=0, le=5)
    # A Retry-After longer than this fails immediately so the fallback provider can take over.
    max_retry_wait_s: float = Field(3.0, ge=0, le=60)

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(max_retries=self.max_retries, max_retry_wait_s=self.max_retry_wait_s)

    def httpx_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(
            self.read_timeout_s, connect=self.connect_timeout_s, pool=self.connect_timeout_s
        )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 2
    base_delay_s: float = 0.2
    max_delay_s: float = 2.0
    max_retry_wait_s: float = 3.0

    def backoff(self, attempt: int) -> float:
        """Jittered exponential delay before retry number `attempt` (1-based)."""
        d = min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1)))
        return d * (0.5 + random.random() / 2)

    def delay(self, attempt: int, headers: Mapping[str, str] | None) -> float | None:
        """Seconds to wait before retrying, or None when the vendor asks for too long a wait."""
        ra = retry_after_s(headers) if headers is not None else None
        if ra is None:
            return self.backoff(attempt)
        if ra > self.max_retry_wait_s:
            return None
        return ra


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Parse `retry-after-ms` (OpenAI) or `Retry-After` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# ---------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------

_SECRETS: set[str] = set()
_MAX_SECRETS = 512
# Shorter strings are not treated as secrets: redacting them would mangle ordinary text.
_MIN_SECRET_LEN = 8


def remember_secret(value: str) -> None:
    if len(value) >= _MIN_SECRET_LEN and value not in _SECRETS:
        if len(_SECRETS) >= _MAX_SECRETS:
            _SECRETS.pop()
        _SECRETS.add(value)


def redact(text: str) -> str:
    """Replace every known secret in `text` with `***`."""
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "***")
    return text


async def resolve_api_key(
    ctx: ProviderContext, ref: SecretRef | None, provider: str, *, required: bool = True
) -> str | None:
    """Resolve a credential reference through the host; the value is never logged."""
    # A missing credential is this provider's problem; the next one in the chain has its own.
    if ref is None:
        if required:
            raise ProviderError(provider, "api_key is not configured", code="missing_credential")
        return None
    try:
        value = await ctx.resolve_secret(ref)
    except ProviderError:
        raise
    except Exception as exc:
        # The exception text is the host's; keep only its type so nothing sensitive leaks.
        raise ProviderError(
            provider,
            f"credential could not be resolved ({type(exc).__name__})",
            code="missing_credential",
        ) from None
    if not value:
        raise ProviderError(provider, "credential resolved to an empty value",
                            code="missing_credential")
    remember_secret(value)
    return value


class _RedactingLogger(logging.LoggerAdapter[logging.Logger]):
    """Formats the record itself and strips known secrets before handing it on."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        text = str(msg)
        if args:
            try:
                text = text % args
            except (TypeError, ValueError):
                text = " ".join([text, *map(str, args)])
        passthrough = {k: v for k, v in kwargs.items() if k in ("exc_info", "stack_info", "extra")}
        self.logger.log(level, redact(text), stacklevel=2, **passthrough)


_WS_LOGGER = _RedactingLogger(logging.getLogger("websockets.client"), {})


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def vendor_message(
    body: bytes | bytearray | str | Mapping[str, Any] | None,
) -> tuple[str | None, str | None]:
    """(message, code) from a vendor error body, whatever its shape:

    OpenAI `{"error": {"message", "type", "code"}}`, Anthropic `{"type": "error", "error":
    {"type", "message"}}`, Deepgram `{"err_code", "err_msg"}` or `{"category", "message"}`,
    ElevenLabs `{"detail": {"status", "message"}}` / `{"message", "error", "code"}`, Cartesia
    `{"error": "..."}` / `{"title", "message"}`; plain text is used as is.
    """
    if body is None:
        return None, None
    if isinstance(body, (bytearray, memoryview)):
        body = bytes(body)
    data: Any = body
    if isinstance(body, (bytes, str)):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        try:
            data = json.loads(text)
        except ValueError:
            text = text.strip()
            return (text[:500] or None), None
    if not isinstance(data, Mapping):
        return (str(data)[:500] or None), None

    err = data.get("error")
    if isinstance(err, Mapping):
        msg = err.get("message") or err.get("msg")
        code = err.get("code") or err.get("type")
        return _s(msg), _s(code)
    if data.get("err_msg") or data.get("err_code"):
        return _s(data.get("err_msg")), _s(data.get("err_code"))
    detail = data.get("detail")
    if isinstance(detail, Mapping):
        return _s(detail.get("message")), _s(detail.get("status") or detail.get("code"))
    if isinstance(detail, list) and detail:
        first = detail[0]
        if isinstance(first, Mapping):
            loc = ".".join(str(p) for p in first.get("loc", []) if p != "body")
            return _s(f"{loc}: {first.get('msg')}" if loc else first.get("msg")), "validation"
    if isinstance(detail, str):
        return detail, None
    if data.get("message"):
        code = err if isinstance(err, str) else data.get("code") or data.get("category")
        return _s(data.get("message")), _s(code)
    if isinstance(err, str):
        return err, _s(data.get("code"))
    if data.get("title"):
        return _s(data.get("title")), _s(data.get("code"))
    return None, None


def _s(v: Any) -> str | None:
    return None if v is None or v == "" else str(v)


def http_error(
    provider: str,
    status: int,
    body: bytes | bytearray | str | None,
    *,
    fallback_message: str | None = None,
) -> ProviderError:
    msg, code = vendor_message(body)
    msg = msg or fallback_message or f"HTTP {status}"
    return ProviderError(
        provider,
        redact(f"HTTP {status}: {msg}"),
        status=status,
        retryable=status not in REQUEST_FAULT_STATUS,
        code=code,
    )


def ws_closed_error(provider: str, exc: ConnectionClosed) -> ProviderError:
    """A WebSocket that closed under us, with the vendor's close code and reason."""
    frame = exc.rcvd
    code = frame.code if frame is not None else 1006
    reason = frame.reason if frame is not None else ""
    text = f"WebSocket closed ({code}{': ' + reason if reason else ''})"
    # Vendors use 1008/1011 for everything from a bad key to their own crash; another provider
    # may always do better, so a dropped socket never blocks the fallback chain.
    return ProviderError(provider, redact(text), retryable=True, code=reason or str(code))


def transport_error(provider: str, exc: BaseException, what: str) -> ProviderError:
    detail = redact(str(exc)) or type(exc).__name__
    return ProviderError(provider, f"{what} ({detail})", retryable=True, code="connection")


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------

_CLIENT_KEY = "providers.http:client"


def shared_client(ctx: ProviderContext) -> httpx.AsyncClient:
    """The process-wide pooled client (one per event loop), created on first use."""
    loop = asyncio.get_running_loop()
    entry = ctx.shared.get(_CLIENT_KEY)
    if entry is not None:
        owner, client = entry
        if owner is loop and not client.is_closed:
            return client
    client = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100,
                            keepalive_expiry=60.0),
        headers={"user-agent": "phonebooth"},
        follow_redirects=False,
    )
    ctx.shared[_CLIENT_KEY] = (loop, client)
    return client


async def aclose_shared(shared: dict[str, Any]) -> None:
    """Close the pooled client kept in a context's `shared` dict (host shutdown, tests)."""
    entry = shared.pop(_CLIENT_KEY, None)
    if entry is not None:
        await entry[1].aclose()


async def _send_with_retry(
    client: httpx.AsyncClient,
    provider: str,
    build: Callable[[], httpx.Request],
    policy: RetryPolicy,
) -> httpx.Response:
    attempt = 0
    while True:
        attempt += 1
        try:
            response = await client.send(build(), stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            err = transport_error(provider, exc, "could not connect")
            if attempt > policy.max_retries:
                raise err from None
            await asyncio.sleep(policy.backoff(attempt))
            continue
        except httpx.TimeoutException:
            # The vendor accepted the request and then went quiet; waiting again would double the
            # silence on the call, so let the caller (or the fallback) move on.
            raise ProviderError(
                provider, "timed out waiting for the response", retryable=True, code="timeout"
            ) from None
        except httpx.TransportError as exc:
            raise transport_error(provider, exc, "request failed") from None

        if response.status_code < 400:
            return response
        try:
            body = await response.aread()
        except httpx.HTTPError:
            body = b""
        finally:
            await response.aclose()
        err = http_error(provider, response.status_code, body)
        if response.status_code not in RETRYABLE_STATUS or attempt > policy.max_retries:
            raise err
        delay = policy.delay(attempt, response.headers)
        if delay is None:
            raise err
        log.info("%s: HTTP %d, retry %d in %.2fs", provider, response.status_code, attempt, delay)
        await asyncio.sleep(delay)


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient,
    provider: str,
    build: Callable[[], httpx.Request],
    policy: RetryPolicy,
) -> AsyncIterator[httpx.Response]:
    """Send a request (retrying before the first byte) and yield the streaming response.

    Transport failures while the body is read inside the block become retryable
    ProviderErrors; leaving the block (normally, by error or by cancellation) closes the response,
    which drops the vendor connection when the body was not fully read.
    """
    response = await _send_with_retry(client, provider, build, policy)
    try:
        yield response
    except httpx.TimeoutException:
        raise ProviderError(
            provider, "timed out while streaming the response", retryable=True, code="timeout"
        ) from None
    except httpx.TransportError as exc:
        raise transport_error(provider, exc, "connection lost mid-stream") from None
    finally:
        await response.aclose()


# How long a finished stream's remaining bytes may take to arrive. Reading them is what lets the
# pooled connection serve the next request: a response closed with its body unread drops the
# connection, and every turn would then pay a new TCP and TLS handshake to the vendor.
DRAIN_S = 0.5


async def iter_sse(
    response: httpx.Response,
    last: Callable[[str, str], bool] | None = None,
) -> AsyncIterator[tuple[str, str]]:
    """Server-sent events as (event, data) pairs; `event` defaults to "message".

    `last` names the vendor's final event (OpenAI's `data: [DONE]`, Anthropic's
    `message_stop`): it is yielded, then the rest of the body is read (for up to `DRAIN_S`) and
    the iteration ends, so the connection goes back to the pool. The caller should not `break`
    on it: leaving the loop early leaves the body unread."""
    lines = response.aiter_lines()
    event = ""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                name, payload = event or "message", "\n".join(data)
                yield name, payload
                if last is not None and last(name, payload):
                    await _drain(lines)
                    return
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data:
        yield event or "message", "\n".join(data)


async def _drain(lines: AsyncIterator[str]) -> None:
    try:
        async with asyncio.timeout(DRAIN_S):
            async for _ in lines:
                pass
    except (TimeoutError, httpx.HTTPError):
        pass  # not reusable: closing the response drops the connection, as before


# ---------------------------------------------------------------------------------------------
# WebSocket
# ---------------------------------------------------------------------------------------------


async def ws_connect(
    url: str,
    *,
    provider: str,
    headers: Mapping[str, str],
    policy: RetryPolicy,
    open_timeout: float,
    close_timeout: float = 1.0,
    max_size: int | None = 16 * 1024 * 1024,
) -> ClientConnection:
    """Open a WebSocket with auth headers, retrying handshake 429/5xx and connect failures.

    Compression is off: audio does not compress and deflate costs CPU per frame per call.
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake, InvalidStatus

    attempt = 0
    while True:
        attempt += 1
        headers_seen: Mapping[str, str] | None = None
        try:
            return await connect(
                url,
                additional_headers=dict(headers),
                open_timeout=open_timeout,
                close_timeout=close_timeout,
                compression=None,
                max_size=max_size,
                logger=_WS_LOGGER,
                user_agent_header="phonebooth",
            )
        except InvalidStatus as exc:
            resp = exc.response
            headers_seen = resp.headers
            # Deepgram explains refused upgrades in a `dg-error` header as well as the body.
            err = http_error(provider, resp.status_code, resp.body or None,
                             fallback_message=resp.headers.get("dg-error"))
            if resp.status_code not in RETRYABLE_STATUS:
                raise err from None
        except TimeoutError:
            err = ProviderError(provider, "WebSocket handshake timed out", retryable=True,
                                code="timeout")
        except (OSError, InvalidHandshake) as exc:
            err = transport_error(provider, exc, "WebSocket connect failed")
        if not err.retryable or attempt > policy.max_retries:
            raise err
        delay = policy.delay(attempt, headers_seen)
        if delay is None:
            raise err
        log.info("%s: WebSocket connect failed (%s), retry %d in %.2fs", provider, err.message,
                 attempt, delay)
        await asyncio.sleep(delay)


async def ws_close_quietly(ws: ClientConnection | None, code: int = 1000) -> None:
    """Start the closing handshake (the close frame goes out at once) and never raise."""
    if ws is None:
        return
    try:
        await ws.close(code)
    except Exception:  # the socket may already be gone; nothing useful to report
        log.debug("websocket close failed", exc_info=True)


__all__ = [
    "REQUEST_FAULT_STATUS",
    "RETRYABLE_STATUS",
    "CloudConfig",
    "RetryPolicy",
    "aclose_shared",
    "http_error",
    "iter_sse",
    "open_stream",
    "redact",
    "remember_secret",
    "resolve_api_key",
    "retry_after_s",
    "shared_client",
    "transport_error",
    "vendor_message",
    "ws_close_quietly",
    "ws_closed_error",
    "ws_connect",
]
