"""Text mode (bring your own LLM): the customer app is the engine's LLM.

Each time the engine wants an answer, `stream()` sends `llm.request` with the conversation so
far and yields the app's `text` tokens until one says `last`. The app has `reply_timeout_s` for
its first token and between tokens; `agent_session.extend_wait` moves that deadline. A stream the
engine closes early (the caller barged in, a preemptive answer was dropped, the call ended) is
reported with `llm.cancelled`, and tokens still arriving for it are refused as `not_waiting`.
A silent app raises `ProviderError`, which the engine answers with its apology like any LLM
failure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from app.agent_config import AppSocketSettings
from app.calls.customer_app.commands import TextToken
from providers.base import ProviderError, TextDelta

NAME = "app"


@dataclasses.dataclass(slots=True)
class _Request:
    deadline: float
    tokens: asyncio.Queue[TextToken] = dataclasses.field(default_factory=asyncio.Queue)


class AppLLM:
    name = NAME
    model = "customer-app"

    def __init__(self, send: Callable[[dict[str, Any]], None],
                 settings: AppSocketSettings) -> None:
        self._send = send
        self._settings = settings
        self._requests: dict[str, _Request] = {}
        self._latest: str | None = None
        # Requests the app was told are cancelled: their late tokens are dropped quietly.
        self._cancelled: deque[str] = deque(maxlen=32)

    @property
    def waiting(self) -> bool:
        return bool(self._requests)

    def on_token(self, token: TextToken) -> bool:
        """Route a `text` message to its request; False when nothing waits for it (tokens of a
        request the app was told is cancelled are dropped as if taken)."""
        rid = token.request_id or self._latest
        req = self._requests.get(rid) if rid is not None else None
        if req is None:
            return rid in self._cancelled
        req.tokens.put_nowait(token)
        return True

    def extend_wait(self, seconds: float | None) -> bool:
        """Give the open requests more time; False when none is open."""
        extra = seconds if seconds is not None else self._settings.reply_timeout_s
        for req in self._requests.values():
            req.deadline += extra
        return bool(self._requests)

    async def stream(self, messages: list[dict[str, Any]], tools: list[Any] | None = None,
                     settings: dict[str, Any] | None = None) -> AsyncIterator[TextDelta]:
        loop = asyncio.get_running_loop()
        rid = f"req_{uuid.uuid4().hex[:16]}"
        req = self._requests[rid] = _Request(loop.time() + self._settings.reply_timeout_s)
        self._latest = rid
        self._send({"type": "llm.request", "request_id": rid, "messages": messages,
                    "tools": [_spec(t) for t in tools or ()]})
        finished = False
        try:
            while True:
                remaining = req.deadline - loop.time()
                if remaining <= 0:
                    finished = True
                    self._cancelled.append(rid)
                    self._send({"type": "llm.cancelled", "request_id": rid, "reason": "timeout"})
                    raise ProviderError(NAME, f"the app sent no text for request {rid} in time",
                                        retryable=False, code="timeout")
                try:
                    token = await asyncio.wait_for(req.tokens.get(), remaining)
                except TimeoutError:
                    continue  # the deadline may have moved meanwhile (extend_wait)
                req.deadline = loop.time() + self._settings.reply_timeout_s
                if token.token:
                    yield TextDelta(token.token)
                if token.last:
                    finished = True
                    return
        finally:
            self._requests.pop(rid, None)
            if not finished:
                self._cancelled.append(rid)
                self._send({"type": "llm.cancelled", "request_id": rid, "reason": "cancelled"})


def _spec(tool: Any) -> Any:
    if dataclasses.is_dataclass(tool) and not isinstance(tool, type):
        return dataclasses.asdict(tool)
    return tool
