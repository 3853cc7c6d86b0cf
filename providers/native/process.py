"""The server's handle on one native worker process (see `worker` for the protocol).

A worker is started with `python -m <module> FD` and a socket pair: no fork of the server
(forking a process that runs threads and an event loop is unsafe), and nothing of the server's
state in the child. `start()` blocks until the engine is loaded (call it off the loop).

One thread per worker reads its pipe and hands each message to the job it belongs to, on that
job's event loop; messages of a job that was already given up (cancelled) are dropped. When the
pipe breaks the worker is dead: the running job ends with `WorkerDied` at once (the pipe closes
the moment the process dies, so a crash is noticed in milliseconds, not after a timeout), and the
owner's `on_death` callback runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from providers.base import ProviderError

log = logging.getLogger(__name__)

# The project root, so the worker imports this very code even when the server was started with
# the project on sys.path only (a checkout, a test run).
_ROOT = str(Path(__file__).resolve().parents[2])
# How long the worker may take to exit after its pipe closes before it is killed.
_EXIT_GRACE_S = 2.0
# How often the consumer says how far it has read (the worker's window is in the job).
_ACK_EVERY = 4

_ids = itertools.count(1)


@dataclass(frozen=True)
class WorkerSpec:
    """What to start: one engine configuration. Hashable: pools are keyed by it."""

    provider: str  # the provider name its errors carry, e.g. "llama_cpp"
    label: str  # the engine in messages, e.g. "llama.cpp"
    module: str  # run as `python -m module FD`
    model_path: str  # checked before a start, named in messages
    options: tuple[tuple[str, Any], ...]  # the engine's load arguments
    # What a worker dying of a fault before it finished any job most likely means.
    crash_hint: str = ""

    def load_options(self) -> dict[str, Any]:
        return dict(self.options)


class WorkerDied(ProviderError):
    """The worker process died (a native crash, the OOM killer, a kill)."""

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(provider, message, code="worker_died")


class WorkerStopped(ProviderError):
    """The worker was stopped on purpose (shutdown) before it was ready."""


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _native_fault(returncode: int | None) -> bool:
    return returncode in (-signal.SIGILL, -signal.SIGSEGV, -signal.SIGBUS)


class NativeWorker:
    def __init__(self, spec: WorkerSpec, *,
                 on_death: Callable[[NativeWorker], None] | None = None) -> None:
        self.spec = spec
        self.on_death = on_death
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.death: str | None = None  # why it died, once it has
        self._closing = False  # killed on purpose: not a death to report
        # What the last finished job reported (the engine's own statistics).
        self.last_stats: dict[str, Any] = {}
        self.jobs_done = 0
        # Items received and their summed delay from the worker's send to the consumer.
        self.items = 0
        self.item_delay_s = 0.0
        self._conn: Connection | None = None
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._job: tuple[int, Callable[[tuple[Any, ...]], None]] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.death is None

    @property
    def running(self) -> bool:
        """A job is in progress (between its request and its end)."""
        return self._job is not None

    def _hint(self, code: int | None) -> str:
        return self.spec.crash_hint if _native_fault(code) and self.spec.crash_hint else ""

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """Spawn the worker and load the engine; blocking. Raises ProviderError saying why the
        worker could not start (the load failed, or the process died while loading)."""
        spec = self.spec
        parent, child = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_ROOT, env.get("PYTHONPATH", "")) if p)
        try:
            self.proc = subprocess.Popen(
                # -P: the server's working directory is not put on sys.path (a folder there
                # named like one of our packages must not shadow it).
                [sys.executable, "-P", "-m", spec.module, str(child.fileno())],
                pass_fds=(child.fileno(),), env=env, stdin=subprocess.DEVNULL,
                start_new_session=True)  # a Ctrl-C meant for the server is the server's to handle
        except OSError as exc:
            parent.close()
            raise ProviderError(spec.provider,
                                f"could not start a {spec.label} worker: {exc}") from exc
        finally:
            child.close()
        self.started_at = time.monotonic()
        conn = Connection(parent.detach())
        self._conn = conn
        try:
            conn.send(("load", spec.load_options()))
            if not conn.poll(timeout_s):
                raise ProviderError(spec.provider, f"the {spec.label} worker did not load "
                                    f"within {timeout_s:g} s")
            reply = conn.recv()
        except (EOFError, OSError):
            if self._closing:
                raise WorkerStopped(spec.provider, f"the {spec.label} worker was stopped "
                                    "while loading") from None
            self.kill()
            code = self.proc.wait()
            raise ProviderError(spec.provider, f"the {spec.label} worker died while loading "
                                f"({describe_exit(code)}){self._hint(code)}") from None
        except ProviderError:
            self.kill()
            raise
        if reply[0] != "ready":
            self.kill()
            raise ProviderError(spec.provider,
                                f"could not load {Path(spec.model_path).name}: {reply[2]}")
        threading.Thread(target=self._read, name=f"native-worker-{self.pid}",
                         daemon=True).start()
        info: dict[str, Any] = reply[1]
        return info

    def kill(self) -> None:
        """Stop the worker now (shutdown, or a worker that must not be reused)."""
        proc = self.proc
        if proc is None:
            return
        self._closing = True
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(_EXIT_GRACE_S)
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()

    # -- jobs -----------------------------------------------------------------------------------

    async def run(self, job: dict[str, Any], window: int = 16,
                  ) -> AsyncGenerator[tuple[Any, ...], None]:
        """Run one job; yields ("item", payload) messages, then ("done", stats). The worker
        runs at most `window` items ahead of what the caller has taken. Raises WorkerDied if
        the worker dies meanwhile, ProviderError for a job it could not do. Leaving early
        (aclose, cancellation) tells the worker to stop the job."""
        provider = self.spec.provider
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        job_id = next(_ids)

        def deliver(msg: tuple[Any, ...]) -> None:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
                loop.call_soon_threadsafe(inbox.put_nowait, msg)

        with self._lock:
            if self.death is not None:
                raise WorkerDied(provider, self.death)
            self._job = (job_id, deliver)
        finished = False
        read = 0
        try:
            self._send(("run", job_id, job, window))
            while True:
                msg = await inbox.get()
                kind = msg[0]
                if kind == "item":
                    self.items += 1
                    self.item_delay_s += time.monotonic() - msg[3]
                    yield ("item", msg[2])
                    read += 1
                    if read % _ACK_EVERY == 0:
                        self._send(("ack", job_id, read))
                elif kind == "done":
                    finished = True
                    yield ("done", msg[2])
                    return
                elif kind == "died":
                    finished = True
                    raise WorkerDied(provider, msg[1])
                else:  # ("error", id, message, retryable)
                    finished = True
                    raise ProviderError(provider, str(msg[2]), retryable=bool(msg[3]))
        finally:
            with self._lock:
                if self._job is not None and self._job[0] == job_id:
                    self._job = None
            if not finished:
                with contextlib.suppress(OSError, WorkerDied):
                    self._send(("cancel", job_id))

    def _send(self, msg: tuple[Any, ...]) -> None:
        conn = self._conn
        if conn is None or self.death is not None:
            raise WorkerDied(self.spec.provider,
                             self.death or f"the {self.spec.label} worker is not running")
        with self._send_lock:
            try:
                conn.send(msg)
            except OSError as exc:
                raise WorkerDied(self.spec.provider,
                                 f"the {self.spec.label} worker's pipe broke: {exc}") from None

    def _read(self) -> None:
        conn = self._conn
        assert conn is not None and self.proc is not None
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            if msg[0] == "done":
                self.last_stats = msg[2]
                self.jobs_done += 1
            with self._lock:
                job = self._job
            if job is not None and msg[1] == job[0]:
                job[1](msg)
        # The pipe closed: the process is gone (or going). Wait for its exit to say why.
        try:
            code = self.proc.wait(_EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.returncode
        why = f"the {self.spec.label} worker (pid {self.pid}) died: {describe_exit(code)}"
        if self.jobs_done == 0:  # it never finished a job: maybe the build, not bad luck
            why += self._hint(code)
        with self._lock:
            self.death = why
            job, self._job = self._job, None
        with contextlib.suppress(OSError):
            conn.close()
        if job is not None:
            job[1](("died", why))
        if self._closing:
            return
        log.error("%s", why)
        if self.on_death is not None:
            try:
                self.on_death(self)
            except Exception:
                log.exception("%s worker death callback failed", self.spec.label)
