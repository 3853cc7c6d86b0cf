"""The JSON-over-WebSocket plumbing both vendors' live APIs share."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import numpy as np

from providers.http import RetryPolicy, transport_error, ws_close_quietly, ws_closed_error
from providers.http import ws_connect as _ws_connect

log = logging.getLogger(__name__)


def pcm_b64(samples: np.ndarray) -> str:
    return base64.b64encode(np.asarray(samples, dtype="<i2").tobytes()).decode("ascii")


def b64_pcm(data: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(data), dtype="<i2").astype(np.int16)


class JsonSocket:
    """One vendor WebSocket carrying JSON messages; closed-socket errors become ProviderError."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._ws: Any = None

    async def open(self, url: str, headers: Mapping[str, str], policy: RetryPolicy,
                   open_timeout: float) -> None:
        self._ws = await _ws_connect(url, provider=self.provider, headers=headers,
                                     policy=policy, open_timeout=open_timeout)

    async def send(self, message: dict[str, Any]) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await self._ws.send(json.dumps(message))
        except ConnectionClosed as exc:
            raise ws_closed_error(self.provider, exc) from None
        except OSError as exc:
            raise transport_error(self.provider, exc, "WebSocket send failed") from None

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        """Parsed messages until the vendor closes normally; malformed ones are logged and
        skipped so one bad frame cannot end a live call."""
        from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

        while True:
            try:
                raw = await self._ws.recv()
            except ConnectionClosedOK:
                return
            except ConnectionClosed as exc:
                raise ws_closed_error(self.provider, exc) from None
            try:
                msg = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                log.warning("%s: skipped a message that is not JSON", self.provider)
                continue
            if not isinstance(msg, dict):
                log.warning("%s: skipped a message that is not a JSON object", self.provider)
                continue
            yield msg

    async def close(self) -> None:
        await ws_close_quietly(self._ws)


__all__ = ["JsonSocket", "b64_pcm", "pcm_b64"]
