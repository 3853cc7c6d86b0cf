"""The outbox: every call record reaches the database through a durable local queue.

    call ──put()──▶ memory queue ──spooler──▶ outbox file (fsync per batch) ──replayer──▶ database

`put()` never waits and never touches the database, so a slow or absent database cannot slow a
call: the memory queue drains into the local file within milliseconds, and the replayer writes
the file's records to the database in order, one transaction per batch, removing them once
committed. While the database is away the replayer retries with backoff and records pile up in
the file (bounded by `outbox.max_entries` / `max_bytes` / `max_age_s`); a restart replays what
is left. A record is replayed at least once, so every applier's writes are idempotent.

Failures are told apart: an outage (connection refused or lost, a lock timeout, a ping that
fails) keeps the records and retries; a record the database refuses while it otherwise answers
(a constraint, a bad value) is parked in the file with its error and counted, so it cannot
block the records behind it. Nothing is ever dropped without an error metric and a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import OutboxSettings
from app.outbox.store import NewRecord, OutboxFile, Record

log = logging.getLogger(__name__)

T = TypeVar("T")

# A write that takes longer than this is treated as an outage (a hung server, a network
# partition): the batch is retried later instead of holding the replayer forever.
WRITE_TIMEOUT_S = 30.0
PING_TIMEOUT_S = 3.0
SPOOL_BATCH = 1024
RETRY_MIN_S = 0.2


class Applier(Protocol):
    """Writes one kind of record inside the replayer's transaction."""

    async def apply(self, db: AsyncSession, record: Record, body: Any) -> None: ...

    def committed(self) -> None:
        """The transaction holding this applier's writes committed."""

    def discarded(self) -> None:
        """The transaction rolled back (it will be retried)."""


def encode(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def is_outage(exc: BaseException) -> bool:
    """Does this error say the database is unreachable or busy (retry), rather than that it
    refused this record (park)?"""
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError,
                        sa_exc.DisconnectionError, sa_exc.TimeoutError, TimeoutError, OSError)):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    # SQLAlchemy wraps asyncpg's error in its own adapter class (`orig`), whose cause is the
    # driver's exception: look down the whole chain, by SQLSTATE where the server sent one —
    # class 08 (connection), 53 (out of connections/memory) and 57P01-57P03 (shutting down,
    # crashed, starting up) all mean "try again later", not "this record is bad".
    seen: set[int] = set()
    cur: BaseException | None = getattr(exc, "orig", None) or exc.__cause__
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if type(cur).__name__ in _ASYNCPG_OUTAGES or isinstance(cur, (OSError, TimeoutError)):
            return True
        state = getattr(cur, "sqlstate", None)
        if isinstance(state, str) and (state[:2] in ("08", "53") or state in _SHUTDOWN_STATES):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


# asyncpg's: the server is shutting down, starting up or the connection went away.
_ASYNCPG_OUTAGES = frozenset({
    "AdminShutdownError", "CannotConnectNowError", "CrashShutdownError",
    "ConnectionDoesNotExistError", "ConnectionFailureError", "InterfaceError",
    "InternalClientError"})
_SHUTDOWN_STATES = frozenset({"57P01", "57P02", "57P03"})


class Outbox:
    def __init__(
        self,
        settings: OutboxSettings,
        path: str | Path,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        self.settings = settings
        self.path = str(path)
        self._sm = sessionmaker
        self._appliers: dict[str, Applier] = {}
        self._queue: asyncio.Queue[NewRecord | asyncio.Future[int]] = asyncio.Queue(
            settings.queue_size)
        self._file: OutboxFile | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._spooler: asyncio.Task[None] | None = None
        self._replayer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._done_through = 0  # highest record id written (or parked/expired)
        self._stopped = False
        self.db_up = True
        self.db_error = ""
        # Exported by the metrics module (app.events.service counters).
        self.replayed_total = 0
        self.failed_total = 0  # parked: the database refused them while it answered
        self.rejected_total = 0  # refused at the bounds (file or memory queue full)
        self.expired_total = 0  # given up at max_age_s
        self.outages_total = 0
        self._on_up: list[Callable[[], None]] = []

    # -- wiring ------------------------------------------------------------------------------
    def register(self, kind: str, applier: Applier) -> None:
        self._appliers[kind] = applier

    # -- producers (any coroutine on the loop; never blocks) ---------------------------------
    def put(self, kind: str, session_id: str | None, body: Any) -> bool:
        """Queue one record for the database. False (counted, logged) only at the bounds."""
        rec = NewRecord(kind, session_id or None, encode(body), time.time())
        if self._stopped:
            self._reject(1, "the outbox is stopped")
            return False
        try:
            self._queue.put_nowait(rec)
        except asyncio.QueueFull:
            self._reject(1, f"its memory queue is full ({self.settings.queue_size})")
            return False
        return True

    def _reject(self, n: int, why: str) -> None:
        before = self.rejected_total
        self.rejected_total += n
        # One line per call-sized burst, not one per record.
        if before == 0 or before // 1000 != self.rejected_total // 1000:
            log.error("outbox: %d call record(s) refused because %s; %d refused so far "
                      "(raise outbox.max_entries/max_bytes or bring the database back)",
                      n, why, self.rejected_total)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        if self._spooler is not None:
            return
        self._stopped = False
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="outbox")
        s = self.settings
        try:
            self._file = await self._run(
                lambda: OutboxFile(self.path, max_entries=s.max_entries, max_bytes=s.max_bytes))
        except BaseException:
            self._thread.shutdown(wait=False)
            self._thread = None
            raise
        if self._file.depth:
            log.warning("outbox %s holds %d record(s) from an earlier run; replaying them",
                        self.path, self._file.depth)
        if self._file.parked_depth:
            log.error("outbox %s holds %d parked record(s) the database refused (table "
                      "`parked`)", self.path, self._file.parked_depth)
        self._spooler = asyncio.create_task(self._spool(), name="outbox-spooler")
        self._replayer = asyncio.create_task(self._replay(), name="outbox-replayer")

    async def stop(self, grace_s: float = 10.0) -> None:
        """Spool everything queued to the file, give the replayer `grace_s` to write it, then
        stop; what is left stays in the file for the next start."""
        if self._spooler is None:
            return
        if self.db_up:  # else the records wait in the file: no point holding up the shutdown
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush(), grace_s)
        self._stopped = True
        # Whatever is still in memory goes to the file even if the database never came back.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._spool_marker(), 5.0)
        for task in (self._spooler, self._replayer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._spooler = self._replayer = None
        if self._file is not None:
            left = self._file.depth
            if left:
                log.warning("outbox: %d record(s) not yet in the database stay in %s; they are "
                            "written at the next start", left, self.path)
            await self._run(self._file.close)
            self._file = None
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None

    async def flush(self) -> None:
        """Return once every record put before this call is in the database (or parked)."""
        if self._spooler is None:
            return
        target = await self._spool_marker()
        while self._done_through < target and self._file is not None and self._file.depth:
            self._progress.clear()
            await self._progress.wait()

    async def _spool_marker(self) -> int:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self._queue.put(fut)
        return await fut

    # -- state for /readyz and /metrics ------------------------------------------------------
    @property
    def depth(self) -> int:
        return self._file.depth if self._file is not None else 0

    def oldest_age_s(self) -> float:
        oldest = self._file.oldest_created() if self._file is not None else None
        return max(0.0, time.time() - oldest) if oldest is not None else 0.0

    def counters(self) -> dict[str, float]:
        f = self._file
        return {
            "outbox_depth": self.depth + self._queue.qsize(),
            "outbox_bytes": f.bytes if f is not None else 0,
            "outbox_oldest_age_seconds": round(self.oldest_age_s(), 3),
            "outbox_parked": f.parked_depth if f is not None else 0,
            "outbox_database_up": 1 if self.db_up else 0,
            "outbox_replayed_total": self.replayed_total,
            "outbox_failed_total": self.failed_total,
            "outbox_rejected_total": self.rejected_total,
            "outbox_expired_total": self.expired_total,
            "outbox_outages_total": self.outages_total,
        }

    def report_db_error(self, exc: BaseException) -> None:
        """Someone else (the answer URL, a stream) found the database away: use the cache and
        the outbox until the replayer sees it back."""
        if is_outage(exc):
            self._mark_down(exc)

    # -- spooler: memory → file --------------------------------------------------------------
    async def _spool(self) -> None:
        assert self._file is not None
        f = self._file
        while True:
            batch = [await self._queue.get()]
            while len(batch) < SPOOL_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            records = [b for b in batch if isinstance(b, NewRecord)]
            if records:
                try:
                    _, refused = await self._run(f.append, records)
                except Exception as exc:  # the disk itself failed: loud, and keep going
                    refused = len(records)
                    log.error("outbox: could not write %s: %s", self.path, exc)
                if refused:
                    self._reject(refused, f"the outbox is full ({f.depth} records, "
                                          f"{f.bytes} bytes)")
                self._wake.set()
            for b in batch:
                if isinstance(b, asyncio.Future) and not b.done():
                    b.set_result(f.last_id)

    # -- replayer: file → database -----------------------------------------------------------
    async def _replay(self) -> None:
        assert self._file is not None
        f = self._file
        delay = RETRY_MIN_S
        while True:
            if not f.depth:
                self._progress.set()
                if self.db_up:
                    self._wake.clear()
                    if not f.depth:
                        await self._wake.wait()
                    continue
                # Nothing to write, but someone saw the database away: probe it.
                if await self._db_answers():
                    self._mark_up()
                    delay = RETRY_MIN_S
                else:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.settings.retry_max_s)
                continue
            await self._expire(f)
            records = await self._run(f.head, self.settings.batch_size)
            if not records:
                continue
            if await self._write_batch(f, records):
                delay = RETRY_MIN_S
                self._progress.set()
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.retry_max_s)

    async def _expire(self, f: OutboxFile) -> None:
        oldest = f.oldest_created()
        limit = time.time() - self.settings.max_age_s
        if oldest is None or oldest >= limit:
            return
        n = await self._run(f.expire, limit)
        if n:
            self.expired_total += n
            log.error("outbox: gave up %d call record(s) older than outbox.max_age_s=%.0f s "
                      "(the database was away that long)", n, self.settings.max_age_s)

    async def _write_batch(self, f: OutboxFile, records: list[Record]) -> bool:
        """True when the batch is done (written, or its bad records parked); False = outage."""
        try:
            await self._write(records)
        except Exception as exc:
            if is_outage(exc) or not await self._db_answers():
                self._mark_down(exc)
                return False
            log.warning("outbox: a batch of %d record(s) failed (%s); retrying one by one",
                        len(records), _short(exc))
            return await self._write_one_by_one(f, records)
        await self._run(f.remove, records)
        self._written(records)
        return True

    async def _write_one_by_one(self, f: OutboxFile, records: list[Record]) -> bool:
        for r in records:
            try:
                await self._write([r])
            except Exception as exc:
                if is_outage(exc) or not await self._db_answers():
                    self._mark_down(exc)
                    return False
                await self._run(f.park, r, f"{type(exc).__name__}: {exc}")
                self.failed_total += 1
                self._done_through = max(self._done_through, r.id)
                log.error("outbox: the database refused a %s record for session %s; parked "
                          "in %s: %s", r.kind, r.session_id, self.path, _short(exc))
                continue
            await self._run(f.remove, [r])
            self._written([r])
        return True

    def _written(self, records: list[Record]) -> None:
        self.replayed_total += len(records)
        self._done_through = max(self._done_through, records[-1].id)
        if not self.db_up:
            self._mark_up()

    async def _write(self, records: list[Record]) -> None:
        touched: list[Applier] = []
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                async with self._sm() as db, db.begin():
                    for r in records:
                        applier = self._appliers.get(r.kind)
                        if applier is None:
                            raise LookupError(f"no applier for outbox records of kind {r.kind!r}")
                        if applier not in touched:
                            touched.append(applier)
                        await applier.apply(db, r, json.loads(r.body))
        except BaseException:
            for a in touched:
                a.discarded()
            raise
        for a in touched:
            a.committed()

    async def _db_answers(self) -> bool:
        try:
            async with asyncio.timeout(PING_TIMEOUT_S), self._sm() as db:
                await db.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def _mark_down(self, exc: BaseException) -> None:
        self.db_error = _short(exc)
        if self.db_up:
            self.db_up = False
            self.outages_total += 1
            log.warning("database unreachable (%s): calls go on; their records wait in the "
                        "outbox %s", self.db_error, self.path)
        self._wake.set()

    def _mark_up(self) -> None:
        if not self.db_up:
            self.db_up = True
            self.db_error = ""
            log.warning("database is back: replaying %d outbox record(s)", self.depth)
            for cb in list(self._on_up):
                cb()

    def on_database_back(self, callback: Callable[[], None]) -> None:
        """Call `callback` each time the database answers again after an outage."""
        self._on_up.append(callback)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._thread is not None
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)


def _short(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg[:200]}" if msg else type(exc).__name__

