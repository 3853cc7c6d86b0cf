"""A VoiceApp served on 127.0.0.1 and a `websockets` client that signs like Phonebooth."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from app.events.signing import sign_connection
from app.voiceapp import Server, VoiceApp

SECRET = "whsec_test_voiceapp"


@asynccontextmanager
async def serving(app: VoiceApp) -> AsyncIterator[Server]:
    async with app.serve("127.0.0.1", 0) as server:
        yield server


@asynccontextmanager
async def phonebooth(
    server: Server,
    path: str = "/voice",
    *,
    session_id: str = "sess_1",
    secret: str | None = SECRET,
    signed_url: str | None = None,
    timestamp: int | None = None,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[ClientConnection]:
    """Connect as Phonebooth does: the signed upgrade request for `server.url(path)`."""
    url = server.url(path)
    sent = dict(headers or {})
    if secret is not None:
        sent.update(sign_connection(secret, session_id, signed_url or url, timestamp))
    async with connect(url, additional_headers=sent) as ws:
        yield ws


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


async def recv(ws: ClientConnection, within_s: float = 5.0) -> dict[str, Any]:
    message = json.loads(await asyncio.wait_for(ws.recv(), within_s))
    assert isinstance(message, dict)
    return message


async def recv_n(ws: ClientConnection, n: int, within_s: float = 5.0) -> list[dict[str, Any]]:
    return [await recv(ws, within_s) for _ in range(n)]


def started(session_id: str = "sess_1", mode: str = "managed", **fields: Any) -> dict[str, Any]:
    return {"type": "session.started", "agent_session_id": session_id, "ts": 1.0,
            "call_id": "call-uuid-1", "direction": "inbound", "from_number": "+15550001111",
            "to_number": "+15550002222", "agent_id": "agt_1", "agent_version": 1,
            "mode": mode, "resumed": False, **fields}
