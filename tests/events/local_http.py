"""A real HTTP server on 127.0.0.1 for webhook receivers and webhook tools in tests.

It runs on its own threads (http.server.ThreadingHTTPServer), so it answers independently of the
test's event loop, and a handler may block (sleep) to simulate a slow endpoint. Each request is
recorded; `respond(received) -> (status, headers, body)` decides the answer.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)


Responder = Callable[[Received], tuple[int, dict[str, str], bytes]]


def ok_json(body: bytes = b'{"ok":true}') -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/json"}, body


class LocalHttpServer:
    def __init__(self, respond: Responder | None = None, port: int = 0) -> None:
        self.respond: Responder = respond or (lambda r: ok_json())
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                parts = urlsplit(self.path)
                rec = Received(self.command, parts.path, parse_qs(parts.query),
                               {k: v for k, v in self.headers.items()}, body)
                with server._lock:
                    server.requests.append(rec)
                try:
                    status, headers, out = server.respond(rec)
                except Exception as exc:  # a broken test responder answers 599
                    status, headers, out = 599, {}, repr(exc).encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except OSError:
                    pass  # the client gave up (timeout tests)

            do_POST = do_PUT = do_GET = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        for attempt in range(100):  # a fixed port may still be in TIME_WAIT/closing
            try:
                self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
                break
            except OSError:
                if not port or attempt == 99:
                    raise
                time.sleep(0.05)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalHttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> LocalHttpServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    async def wait_for(
        self, pred: Callable[[list[Received]], bool], within_s: float = 20.0
    ) -> None:
        deadline = time.monotonic() + within_s
        while not pred(self.snapshot()):
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met; {len(self.requests)} requests seen")
            await asyncio.sleep(0.02)
