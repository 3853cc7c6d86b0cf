"""`phonebooth serve --workers N`: N server processes on one machine, one port.

Each worker is a full `phonebooth serve` (its own event loop, models, call host) started with
`--reuse-port`: every worker binds the same address with SO_REUSEPORT and the kernel spreads
new connections over them. The workers are one service through the bus (`bus.url`, required):
a call's stream may reach another worker than its answer URL did, and control requests and
events reach every worker.

The supervisor (this process) first does what must happen once — schema migrations, the
generated secret key — then starts worker 0 (which may create the demo agent) and, once it
serves, the others. Each worker gets its own `server.node_id` ("<node_id>-w<i>") and outbox
file. SIGTERM/SIGINT are passed on to every worker, which drains its calls
(`limits.drain_timeout_s`) and exits; a worker that dies on its own is started again (its
calls are closed by the others as `node_lost`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

from app.bus.base import node_name
from app.config import ConfigError, Settings

log = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0  # the first start may fetch and load models
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0)
STOP_TIMEOUT_S = 120.0
PR_SET_PDEATHSIG = 1  # Linux prctl option


def check_workers(settings: Settings, workers: int) -> None:
    if workers > 1 and not settings.bus.enabled:
        raise ConfigError(
            f"config error: bus.url: required to run {workers} workers (they share calls, "
            "control and events through Redis); set bus.url or PHONEBOOTH__BUS__URL, or run "
            "one worker")


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket other workers can bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker_env(settings: Settings, index: int) -> dict[str, str]:
    env = dict(os.environ)
    outbox = settings.outbox_path
    env.update({
        "PHONEBOOTH__SERVER__NODE_ID": f"{node_name(settings.server.node_id)[:60]}-w{index}",
        # Each process replays its own outbox file: two would apply the same records.
        "PHONEBOOTH__OUTBOX__PATH": str(outbox.with_name(f"{outbox.stem}-w{index}"
                                                         f"{outbox.suffix}")),
        # Done once by the supervisor before any worker starts.
        "PHONEBOOTH__DATABASE__MIGRATE_ON_START": "false",
        "PHONEBOOTH__SERVER__WORKERS": "1",
    })
    if index > 0:
        # Worker 0 creates it (when configured); two creating it at once would make two.
        env["PHONEBOOTH__DEMO__CREATE_ON_START"] = "false"
    return env


def _prepare(settings: Settings) -> None:
    """What every worker needs done exactly once: the schema and the secret key file."""
    import asyncio

    from app.db import migrate
    from app.db.engine import open_database
    from app.security.secret_key import load_or_create_secret_key

    load_or_create_secret_key(settings.security)
    if not settings.database.migrate_on_start:
        return

    async def run() -> None:
        db = open_database(settings.database)
        try:
            await migrate.upgrade(db)
        finally:
            await db.dispose()

    asyncio.run(run())


def _stop_with_parent() -> None:
    """In the worker, before exec: SIGTERM (a drain) when the supervisor dies, e.g. killed."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _serving(host: str, port: int) -> bool:
    target = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    try:
        with socket.create_connection((target, port), timeout=1.0):
            return True
    except OSError:
        return False


class Supervisor:
    def __init__(self, settings: Settings, host: str, port: int, workers: int,
                 config: str | None) -> None:
        self.settings = settings
        self.host, self.port, self.n = host, port, workers
        self.config = config
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.restarts: dict[int, int] = {}
        self.stopping = False

    def _argv(self) -> list[str]:
        argv = [sys.executable, "-m", "app.cli"]
        if self.config:
            argv += ["--config", self.config]
        return [*argv, "serve", "--host", self.host, "--port", str(self.port),
                "--workers", "1", "--reuse-port"]

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        # Own session: a Ctrl-C in the terminal reaches the supervisor only, which passes one
        # signal on (a second one would skip the worker's drain).
        proc = subprocess.Popen(self._argv(), env=_worker_env(self.settings, index),
                                start_new_session=True, preexec_fn=_stop_with_parent)
        self.procs[index] = proc
        log.info("worker %d started (pid %d)", index, proc.pid)
        return proc

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        first = not self.stopping
        self.stopping = True
        log.info("received %s: %s %d worker(s)", signal.Signals(sig).name,
                 "stopping" if first else "passing it on to", len(self.procs))
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(sig)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        first = self._spawn(0)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _serving(self.host, self.port):
            if first.poll() is not None or self.stopping:
                log.error("worker 0 exited during start-up (status %s)", first.returncode)
                self._on_signal(signal.SIGTERM, None)
                return self._wait_all() or 1
            if time.monotonic() > deadline:
                log.error("worker 0 did not start within %.0f s", START_TIMEOUT_S)
                self._on_signal(signal.SIGTERM, None)
                self._wait_all()
                return 1
            time.sleep(0.2)
        for i in range(1, self.n):
            self._spawn(i)
        while not self.stopping:
            time.sleep(0.5)
            for i, proc in list(self.procs.items()):
                if proc.poll() is not None and not self.stopping:
                    n = self.restarts.get(i, 0)
                    delay = RESTART_BACKOFF_S[min(n, len(RESTART_BACKOFF_S) - 1)]
                    log.error("worker %d exited (status %s); starting it again in %.0f s", i,
                              proc.returncode, delay)
                    self.restarts[i] = n + 1
                    time.sleep(delay)
                    if not self.stopping:
                        self._spawn(i)
        return self._wait_all()

    def _wait_all(self) -> int:
        status = 0
        deadline = time.monotonic() + STOP_TIMEOUT_S + self.settings.limits.drain_timeout_s
        for i, proc in self.procs.items():
            try:
                code = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop; killing it", i)
                proc.kill()
                code = proc.wait()
            status = status or code
        return status


def serve_workers(settings: Settings, host: str, port: int, workers: int,
                  config: str | None) -> int:
    check_workers(settings, workers)
    from app.logging_setup import configure_logging

    configure_logging(settings)
    _prepare(settings)
    log.info("starting %d workers on %s:%d (one service through bus.url)", workers, host, port)
    return Supervisor(settings, host, port, workers, config).run()

