"""The outbox file: a durable, bounded FIFO of call records on local disk (SQLite).

Records are appended in batches, one transaction each, with `synchronous=FULL` so a batch is
fsynced before `append` returns; removing replayed records does not need that (a record
replayed twice is harmless: every write it stands for is idempotent). A record that the
database refuses for good (not an outage: a constraint, a bad value) is parked in a second
table with the error, so it never blocks the ones behind it and is still on disk to inspect.

Not thread-safe and blocking: the async front (`app.outbox.service`) calls it from one
dedicated thread.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    session_id TEXT,
    body BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS parked (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    session_id TEXT,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    parked REAL NOT NULL,
    error TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Record:
    """One queued write: `kind` names its applier, `body` is its JSON."""

    id: int
    kind: str
    session_id: str | None
    body: bytes
    created: float


@dataclass(frozen=True, slots=True)
class NewRecord:
    kind: str
    session_id: str | None
    body: bytes
    created: float


class OutboxInUse(RuntimeError):
    """Another process (or another server in this one) already owns this outbox file."""


class OutboxFile:
    def __init__(self, path: str | Path, *, max_entries: int, max_bytes: int) -> None:
        self.path = str(path)
        self._lock_fd: int | None = None
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _own(self.path)
        try:
            self._open(max_entries, max_bytes)
        except BaseException:
            self.close_lock()
            raise

    def _open(self, max_entries: int, max_bytes: int) -> None:
        if self.path != ":memory:":
            # Call transcripts live here until replayed: owner-only, like the secret key file
            # (SQLite gives its -wal and -shm files the same mode).
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0), MIN(created), MAX(id) FROM records"
        ).fetchone()
        self.depth: int = row[0]
        self.bytes: int = row[1]
        self._oldest: float | None = row[2]
        self.last_id: int = row[3] or 0
        self.parked_depth: int = self._db.execute("SELECT COUNT(*) FROM parked").fetchone()[0]

    def close_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    # -- writing -----------------------------------------------------------------------------
    def append(self, records: list[NewRecord]) -> tuple[int, int]:
        """Durably append as many as the bounds allow, in order; returns (accepted, refused).
        Once one record does not fit, the rest of the batch is refused too (order is kept)."""
        fits: list[NewRecord] = []
        depth, size = self.depth, self.bytes
        for r in records:
            if depth + 1 > self.max_entries or size + len(r.body) > self.max_bytes:
                break
            fits.append(r)
            depth += 1
            size += len(r.body)
        if fits:
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO records (kind, session_id, body, created) VALUES (?, ?, ?, ?)",
                    [(r.kind, r.session_id, r.body, r.created) for r in fits],
                )
                last = self._db.execute("SELECT MAX(id) FROM records").fetchone()[0]
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self.depth, self.bytes, self.last_id = depth, size, int(last)
            if self._oldest is None:
                self._oldest = fits[0].created
        return len(fits), len(records) - len(fits)

    def head(self, limit: int) -> list[Record]:
        rows = self._db.execute(
            "SELECT id, kind, session_id, body, created FROM records ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        return [Record(*r) for r in rows]

    def remove(self, records: list[Record]) -> None:
        if not records:
            return
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("DELETE FROM records WHERE id = ?", [(r.id,) for r in records])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._removed(records)

    def park(self, record: Record, error: str) -> None:
        """Move a record the database refused for good out of the queue, keeping it."""
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO parked (id, kind, session_id, body, created, parked, "
                "error) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (record.id, record.kind, record.session_id, record.body, record.created,
                 time.time(), error[:2000]),
            )
            self._db.execute("DELETE FROM records WHERE id = ?", (record.id,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self.parked_depth += 1
        self._removed([record])

    def expire(self, older_than: float) -> int:
        """Give up records created before `older_than` (the age bound); returns how many."""
        self._db.execute("PRAGMA synchronous=NORMAL")
        cur = self._db.execute("DELETE FROM records WHERE created < ?", (older_than,))
        n = cur.rowcount
        if n:
            row = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM records").fetchone()
            self.depth, self.bytes = row[0], row[1]
            self._oldest = self._head_created()
        return n

    def _removed(self, records: list[Record]) -> None:
        self.depth -= len(records)
        self.bytes -= sum(len(r.body) for r in records)
        self._oldest = self._head_created() if self.depth else None

    def _head_created(self) -> float | None:
        # Records are appended in time order, so the head is the oldest (a primary-key seek).
        row = self._db.execute("SELECT created FROM records ORDER BY id LIMIT 1").fetchone()
        return row[0] if row else None

    # -- reading -----------------------------------------------------------------------------
    def oldest_created(self) -> float | None:
        return self._oldest

    def close(self) -> None:
        self._db.close()
        self.close_lock()


def _own(path: str) -> int:
    """Take the outbox's owner lock (`<path>.lock`, held until close) or raise OutboxInUse.

    Two owners would each trust their own in-memory depth and last id: one replayer removes
    the other's records from under it, and a shutdown flush then waits for records that are
    already gone. The lock is per open file, so it also tells apart two servers in one
    process; the kernel drops it when the process dies, so a crash never leaves it stale."""
    fd = os.open(path + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutboxInUse(
            f"the outbox file {path} is in use by another Phonebooth process: give each "
            "process its own outbox.path (phonebooth serve --workers N does this itself)"
        ) from None
    return fd
