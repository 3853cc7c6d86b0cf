"""Plivo REST API client for live-call control.

Matches the official SDK's wire habits: Basic auth (auth_id:auth_token), JSON bodies, a
trailing slash on every path. Retries on 5xx and 429 with exponential backoff, honouring
`Retry-After`. A 404 on hangup means the call is already gone, which is what we wanted.

Retry safety: a request that may have reached Plivo is retried on a transport error only when
repeating it is harmless (hangup, transfer). DTMF and make-call are retried only when the
connection was never made, so a flaky network cannot press digits twice or place two calls.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import httpx

from providers.http import retry_after_s

log = logging.getLogger(__name__)

USER_AGENT = "phonebooth-plivo/0.1"
_MAX_RETRY_AFTER_S = 30.0


class PlivoApiError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PlivoNotConfigured(PlivoApiError):
    pass


def _error_text(resp: httpx.Response) -> str:
    try:
        body = resp.json()
        if isinstance(body, dict):
            msg = body.get("error") or body.get("message") or body
            return str(msg)[:300]
    except ValueError:
        pass
    return resp.text[:300]


class PlivoRestClient:
    def __init__(
        self,
        base_url: str,
        auth_id: str,
        auth_token: str | None,
        *,
        timeout_s: float = 10.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.auth_id = auth_id
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._configured = bool(auth_id and auth_token)
        self._base = f"{base_url.rstrip('/')}/Account/{auth_id}/"
        self._client = httpx.AsyncClient(
            auth=(auth_id, auth_token or ""),
            timeout=timeout_s,
            headers={"User-Agent": USER_AGENT},
            transport=transport,
        )

    @property
    def configured(self) -> bool:
        return self._configured

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                       idempotent: bool, ok: tuple[int, ...] = (200, 201, 202, 204),
                       allow: tuple[int, ...] = ()) -> httpx.Response:
        if not self._configured:
            raise PlivoNotConfigured("Plivo REST API is not configured "
                                     "(set plivo.auth_id and plivo.auth_token)")
        url = self._base + path.lstrip("/")
        if not url.endswith("/"):
            url += "/"
        attempt = 0
        while True:
            attempt += 1
            delay: float | None = None
            try:
                resp = await self._client.request(method, url, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # never reached Plivo: always safe to retry
                if attempt > self.max_retries:
                    raise PlivoApiError(f"{method} {path}: cannot reach Plivo: {exc}") from None
                err: str = type(exc).__name__
            except httpx.TransportError as exc:
                if not idempotent or attempt > self.max_retries:
                    raise PlivoApiError(f"{method} {path}: {type(exc).__name__}") from None
                err = type(exc).__name__
            else:
                if resp.status_code in ok or resp.status_code in allow:
                    return resp
                if resp.status_code == 429 or resp.status_code >= 500:
                    if attempt > self.max_retries:
                        raise PlivoApiError(
                            f"{method} {path}: HTTP {resp.status_code} after {attempt} tries: "
                            f"{_error_text(resp)}", resp.status_code)
                    delay = retry_after_s(resp.headers)
                    err = f"HTTP {resp.status_code}"
                else:
                    raise PlivoApiError(f"{method} {path}: HTTP {resp.status_code}: "
                                        f"{_error_text(resp)}", resp.status_code)
            if delay is None:
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                delay *= 0.5 + random.random() / 2  # jitter: replicas don't retry in lockstep
            delay = min(delay, _MAX_RETRY_AFTER_S)
            log.warning("Plivo %s %s failed (%s); retry %d/%d in %.2f s", method, path, err,
                        attempt, self.max_retries, delay)
            await asyncio.sleep(delay)

    # --- calls --------------------------------------------------------------------------------
    async def hangup(self, call_uuid: str) -> bool:
        """Hang up a live call. False when Plivo says it is already gone (404)."""
        resp = await self._request("DELETE", f"Call/{call_uuid}/", idempotent=True, allow=(404,))
        if resp.status_code == 404:
            log.info("hangup: call %s already gone", call_uuid)
            return False
        return True

    async def cancel(self, call_uuid: str) -> None:
        """End a call we placed, ringing or answered: hang it up, or, while it is still a
        request (queued or ringing: Plivo has no live call of that UUID yet), cancel that."""
        if await self.hangup(call_uuid):
            return
        await self._request("DELETE", f"Request/{call_uuid}/", idempotent=True, allow=(404,))

    async def transfer(self, call_uuid: str, aleg_url: str,
                       aleg_method: str = "POST") -> dict[str, Any]:
        """Make the caller's leg fetch new XML from `aleg_url` (e.g. our <Dial> endpoint)."""
        resp = await self._request(
            "POST", f"Call/{call_uuid}/",
            {"legs": "aleg", "aleg_url": aleg_url, "aleg_method": aleg_method},
            idempotent=True)
        return self._json(resp)

    async def send_dtmf(self, call_uuid: str, digits: str, leg: str = "aleg") -> dict[str, Any]:
        resp = await self._request("POST", f"Call/{call_uuid}/DTMF/",
                                   {"digits": digits, "leg": leg}, idempotent=False)
        return self._json(resp)

    async def make_call(self, *, from_: str, to: str, answer_url: str,
                        answer_method: str = "POST", hangup_url: str | None = None,
                        hangup_method: str = "POST", ring_timeout: int | None = None,
                        time_limit: int | None = None, caller_name: str | None = None,
                        extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Place an outbound call; returns Plivo's body (`request_uuid`, `message`, ...)."""
        body: dict[str, Any] = {"from": from_, "to": to, "answer_url": answer_url,
                                "answer_method": answer_method}
        if hangup_url:
            body["hangup_url"] = hangup_url
            body["hangup_method"] = hangup_method
        if ring_timeout is not None:
            body["ring_timeout"] = ring_timeout
        if time_limit is not None:
            body["time_limit"] = time_limit
        if caller_name:
            body["caller_name"] = caller_name
        body.update(extra or {})
        resp = await self._request("POST", "Call/", body, idempotent=False)
        data = self._json(resp)
        ru = data.get("request_uuid")
        if isinstance(ru, list):  # Plivo returns a list when `to` names several numbers
            ru = ru[0] if ru else None
        if not ru:
            raise PlivoApiError("make call: response has no request_uuid", resp.status_code)
        data["request_uuid"] = str(ru)
        return data

    @staticmethod
    def _json(resp: httpx.Response) -> dict[str, Any]:
        if not resp.content:
            return {}
        try:
            data = resp.json()
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {"data": data}
