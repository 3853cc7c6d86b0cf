"""The child side of a native worker: one loaded engine, driven over a pipe by `process`.

An engine module runs `main(argv, MyEngine)` when started as `python -m module FD`, where FD is
the worker's end of a socket pair (stdout/stderr stay free for the native library's own output).
A fault in the native code kills this process, never the server and its other calls.

Messages are pickled tuples:

- in: ("load", options) once, first; then ("run", id, job, window), ("ack", id, n) (the server
  has taken n items of the job) and ("cancel", id).
- out: ("ready", info) or ("error", None, message, retryable) after the load; then per job any
  number of ("item", id, payload, sent_at), and one ("done", id, stats) or
  ("error", id, message, retryable).

One job runs at a time. Each `Job.emit` looks for a cancel of the running job, so a barge-in
stops the job after at most one more item; it also waits there while `window` items are
unacknowledged, so a stalled consumer stops the job too. The worker exits when its pipe closes
(the server went away), so it never outlives the server.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import Any, Protocol


class JobError(Exception):
    """A job the engine cannot do (reported to the server as a ProviderError)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class Job:
    """The running job as the engine sees it: its request and a way to stream results."""

    def __init__(self, channel: _Channel, job_id: int, data: dict[str, Any], window: int) -> None:
        self.data = data
        self._channel = channel
        self._id = job_id
        self._window = window
        self._sent = 0
        self._cancelled = False

    def cancelled(self) -> bool:
        """True once the server has given up on this job (stop working on it)."""
        if not self._cancelled:
            self._cancelled = self._channel.cancelled(self._id, self._sent, self._window)
        return self._cancelled

    def emit(self, payload: Any) -> bool:
        """Send one result; False once the job is cancelled (stop and return)."""
        if self.cancelled():
            return False
        # The send time (a system-wide monotonic clock) lets the server measure what the pipe
        # adds to each item.
        self._channel.conn.send(("item", self._id, payload, time.monotonic()))
        self._sent += 1
        return True


class Engine(Protocol):
    def load(self, options: dict[str, Any]) -> dict[str, Any]:
        """Load the model (raise to fail the start); returns facts for the server's log."""
        ...

    def run(self, job: Job) -> dict[str, Any]:
        """Do one job, streaming results with `job.emit`; returns its statistics. Raise
        JobError for a job that cannot be done."""
        ...


class _Channel:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        # Requests read while looking for a cancel during a job, served after it.
        self.pending: deque[tuple[Any, ...]] = deque()
        self.acked = 0  # items of the running job the server has taken

    def next(self) -> tuple[Any, ...]:
        return self.pending.popleft() if self.pending else self.conn.recv()

    def cancelled(self, job_id: int, sent: int, window: int) -> bool:
        """Read what arrived during the job: True once it is cancelled. Waits (blocking) while
        `window` or more sent items are unacknowledged."""
        while self.conn.poll() or sent - self.acked >= window:
            msg = self.conn.recv()  # EOFError here ends the worker: the server is gone
            if msg[0] == "cancel":
                if msg[1] == job_id:
                    return True
            elif msg[0] == "ack":
                if msg[1] == job_id:
                    self.acked = max(self.acked, int(msg[2]))
            else:
                self.pending.append(msg)
        return False


def serve(conn: Connection, engine: Engine) -> None:
    channel = _Channel(conn)
    try:
        first = conn.recv()
    except EOFError:
        return
    if first[0] != "load":
        conn.send(("error", None, f"expected a load request, got {first[0]!r}", False))
        return
    try:
        info = engine.load(first[1])
    except Exception as exc:  # a bad file or argument: say so and exit
        conn.send(("error", None, f"{type(exc).__name__}: {exc}", False))
        return
    conn.send(("ready", {"pid": os.getpid(), **info}))
    while True:
        try:
            msg = channel.next()
        except EOFError:
            return
        if msg[0] != "run":
            continue  # a cancel or ack for a job that has already ended needs nothing
        job_id = msg[1]
        channel.acked = 0
        try:
            stats = engine.run(Job(channel, job_id, msg[2], int(msg[3])))
        except JobError as exc:
            conn.send(("error", job_id, str(exc), exc.retryable))
            continue
        except Exception as exc:
            conn.send(("error", job_id, f"{type(exc).__name__}: {exc}", True))
            continue
        conn.send(("done", job_id, stats))


def main(argv: list[str], engine: Engine) -> int:
    if len(argv) != 2:
        print(f"usage: python -m {argv[0]} FD", file=sys.stderr)
        return 2
    conn = Connection(int(argv[1]))
    try:
        serve(conn, engine)
    except (BrokenPipeError, ConnectionResetError, EOFError):
        pass  # the server closed the pipe mid-job: nobody is left to answer
    finally:
        conn.close()
    return 0
