"""A fake Plivo REST API (`/v1/Account/{auth_id}/...`) on 127.0.0.1, real HTTP.

Strict about the wire habits of the official SDK: Basic auth, JSON bodies on POST, a trailing
slash on every path. Answers like Plivo's REST API: make call 201 + request_uuid, hangup 204
(404 when the call is unknown or gone), cancel a placed call still ringing (`DELETE
Request/{uuid}/`) 204, transfer 202, DTMF 202.

Hooks let a test connect it to the simulator, e.g. `on_hangup=call.remote_hangup` so a REST
hangup ends the simulated call the way Plivo would. Scripted failures: `fail_next(status, n,
retry_after)`. Runs on the test's event loop (uvicorn task), like `tests.live_server`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

FAKE_AUTH_ID = "MAFAKEPLIVO000000000"
FAKE_AUTH_TOKEN = "fake-plivo-auth-token-0123456789"


@dataclass
class Recorded:
    method: str
    path: str
    body: Any
    headers: dict[str, str]
    at: float
    status: int = 0


@dataclass
class _Fail:
    status: int
    retry_after: float | None


@dataclass
class FakePlivoRest:
    auth_id: str = FAKE_AUTH_ID
    auth_token: str = FAKE_AUTH_TOKEN
    requests: list[Recorded] = field(default_factory=list)
    live_calls: set[str] = field(default_factory=set)
    # Calls placed with `POST Call/` not answered yet: Plivo knows them as requests, which
    # `DELETE Request/` cancels and `DELETE Call/` does not find. Answering moves them on.
    ringing: set[str] = field(default_factory=set)
    on_hangup: Callable[[str], Awaitable[None]] | None = None
    on_transfer: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None
    on_make_call: Callable[[dict[str, Any], str], Awaitable[None]] | None = None
    base_url: str = ""
    _fails: deque[_Fail] = field(default_factory=deque)

    def answered(self, request_uuid: str) -> None:
        """A call we were asked to place was picked up: a live call from now on."""
        self.ringing.discard(request_uuid)
        self.live_calls.add(request_uuid)

    def fail_next(self, status: int, times: int = 1, retry_after: float | None = None) -> None:
        for _ in range(times):
            self._fails.append(_Fail(status, retry_after))

    @property
    def api_base(self) -> str:
        return self.base_url + "/v1"

    def calls_to(self, method: str, suffix: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path.endswith(suffix)]

    # --- app ----------------------------------------------------------------------------------
    def _authorised(self, request: Request) -> bool:
        expected = base64.b64encode(f"{self.auth_id}:{self.auth_token}".encode()).decode()
        return request.headers.get("authorization") == f"Basic {expected}"

    async def _handle(self, request: Request) -> Response:
        raw = await request.body()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
        rec = Recorded(request.method, request.url.path, body, dict(request.headers),
                       time.monotonic())
        self.requests.append(rec)
        resp = await self._respond(request, body)
        rec.status = resp.status_code
        return resp

    async def _respond(self, request: Request, body: Any) -> Response:
        if not self._authorised(request):
            return JSONResponse({"error": "authentication failed"}, 401)
        if self._fails:
            f = self._fails.popleft()
            headers = {"Retry-After": f"{f.retry_after:g}"} if f.retry_after is not None else {}
            return JSONResponse({"error": "scripted failure"}, f.status, headers=headers)
        path = request.url.path
        prefix = f"/v1/Account/{self.auth_id}/"
        if not path.startswith(prefix) or not path.endswith("/"):
            return JSONResponse({"error": "not found"}, 404)
        parts = path[len(prefix):].strip("/").split("/")
        if request.method == "POST":
            if request.headers.get("content-type", "").split(";")[0] != "application/json" \
                    or not isinstance(body, dict):
                return JSONResponse({"error": "expected a JSON object body"}, 400)
        api_id = str(uuid.uuid4())
        if parts == ["Call"] and request.method == "POST":
            missing = [k for k in ("from", "to", "answer_url") if not body.get(k)]
            if missing:
                return JSONResponse({"api_id": api_id, "error": f"missing {missing}"}, 400)
            request_uuid = str(uuid.uuid4())
            self.ringing.add(request_uuid)
            if self.on_make_call is not None:
                asyncio.get_running_loop().create_task(self.on_make_call(body, request_uuid))
            return JSONResponse({"api_id": api_id, "message": "call fired",
                                 "request_uuid": request_uuid}, 201)
        if len(parts) == 2 and parts[0] == "Call":
            call_uuid = parts[1]
            if call_uuid not in self.live_calls:
                return JSONResponse({"api_id": api_id, "error": "not found"}, 404)
            if request.method == "DELETE":
                self.live_calls.discard(call_uuid)
                if self.on_hangup is not None:
                    asyncio.get_running_loop().create_task(self.on_hangup(call_uuid))
                return Response(status_code=204)
            if request.method == "POST":
                if body.get("legs") != "aleg" or not body.get("aleg_url"):
                    return JSONResponse({"api_id": api_id, "error": "legs/aleg_url"}, 400)
                if self.on_transfer is not None:
                    asyncio.get_running_loop().create_task(self.on_transfer(call_uuid, body))
                return JSONResponse({"api_id": api_id, "message": "call transferred"}, 202)
        if len(parts) == 2 and parts[0] == "Request" and request.method == "DELETE":
            # Cancel a call we placed that is still queued or ringing.
            if parts[1] not in self.ringing:
                return JSONResponse({"api_id": api_id, "error": "not found"}, 404)
            self.ringing.discard(parts[1])
            if self.on_hangup is not None:
                asyncio.get_running_loop().create_task(self.on_hangup(parts[1]))
            return Response(status_code=204)
        if len(parts) == 3 and parts[0] == "Call" and parts[2] == "DTMF" \
                and request.method == "POST":
            if parts[1] not in self.live_calls:
                return JSONResponse({"api_id": api_id, "error": "not found"}, 404)
            if not body.get("digits"):
                return JSONResponse({"api_id": api_id, "error": "digits required"}, 400)
            return JSONResponse({"api_id": api_id, "message": "digits sent"}, 202)
        return JSONResponse({"error": "not found"}, 404)

    def app(self) -> Starlette:
        methods = ["GET", "POST", "DELETE", "PUT"]
        return Starlette(routes=[Route("/{path:path}", self._handle, methods=methods)])


@contextlib.asynccontextmanager
async def run_fake_plivo_rest(**kw: Any) -> AsyncIterator[FakePlivoRest]:
    fake = FakePlivoRest(**kw)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()[:2]
    fake.base_url = f"http://{host}:{port}"
    config = uvicorn.Config(fake.app(), log_config=None, lifespan="off", access_log=False)

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # type: ignore[no-untyped-def]
            yield

    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="fake-plivo-rest")
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield fake
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 5)
        sock.close()
