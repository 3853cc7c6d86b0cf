"""Where finished call recordings live: a directory, or an S3-compatible bucket.

`RecordingStore` (one per process, built from `recordings` settings) stores a finished WAV
(`store`: a rename into `dir`, or an upload), finds one again (`locate`, `open_local`,
`iter_s3`) and deletes those older than `retention_days` (`sweep`; run at start and every hour
by `recordings_component`). Calls record into `<dir>/.partial/` while they run (a system temp
file when that directory cannot be written), so a recording never sits in memory.

Blocking work (file moves, boto3) runs in a thread: nothing here holds up a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.config import RecordingsSettings

log = logging.getLogger(__name__)

PARTIAL = ".partial"
SWEEP_EVERY_S = 3600.0
CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Stored:
    location: str  # a file path, or an S3 key
    bytes: int


@dataclass(frozen=True, slots=True)
class Found:
    """A stored recording: a local `path`, or an S3 `key` of `size` bytes."""

    path: Path | None = None
    key: str | None = None
    size: int = 0


def _valid_id(session_id: str) -> bool:
    return bool(session_id) and all(c.isalnum() or c in "-_" for c in session_id)


class RecordingStore:
    def __init__(self, settings: RecordingsSettings) -> None:
        self.settings = settings
        self.dir = settings.path
        self._s3: Any = None

    @property
    def uses_s3(self) -> bool:
        return self.settings.s3 is not None

    # --- while a call runs --------------------------------------------------------------------
    def partial_path(self, session_id: str) -> str:
        """A fresh file for a call to record into (in `<dir>/.partial`, else the temp dir)."""
        try:
            part = self.dir / PARTIAL
            part.mkdir(parents=True, exist_ok=True)
            fd, path = tempfile.mkstemp(prefix=f"{session_id}-", suffix=".wav", dir=part)
        except OSError as exc:
            log.warning("recordings dir %s cannot be written (%s); recording to a temp file",
                        self.dir, exc)
            fd, path = tempfile.mkstemp(prefix=f"pb-rec-{session_id}-", suffix=".wav")
        os.close(fd)
        return path

    # --- storing ------------------------------------------------------------------------------
    def key(self, session_id: str) -> str:
        s3 = self.settings.s3
        return f"{s3.prefix if s3 else ''}{session_id}.wav"

    def local_path(self, session_id: str) -> Path:
        return self.dir / f"{session_id}.wav"

    async def store(self, session_id: str, partial: str) -> Stored:
        """Move a finished recording to its place; the partial file is gone afterwards
        (stored, or deleted when storing failed)."""
        try:
            return await asyncio.to_thread(self._store, session_id, partial)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(partial)

    def _store(self, session_id: str, partial: str) -> Stored:
        size = os.path.getsize(partial)
        if self.settings.s3 is not None:
            key = self.key(session_id)
            self._client().upload_file(partial, self.settings.s3.bucket, key,
                                       ExtraArgs={"ContentType": "audio/wav"})
            return Stored(key, size)
        dest = self.local_path(session_id)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(partial, dest)
        return Stored(str(dest), size)

    # --- reading ------------------------------------------------------------------------------
    async def locate(self, session_id: str) -> Found | None:
        if not _valid_id(session_id):
            return None
        if self.settings.s3 is None:
            return await asyncio.to_thread(self._find_local, session_id)
        return await asyncio.to_thread(self._head, session_id)

    def _find_local(self, session_id: str) -> Found | None:
        path = self.local_path(session_id)
        return Found(path=path, size=path.stat().st_size) if path.is_file() else None

    def _head(self, session_id: str) -> Found | None:
        from botocore.exceptions import ClientError

        assert self.settings.s3 is not None
        key = self.key(session_id)
        try:
            head = self._client().head_object(Bucket=self.settings.s3.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return Found(key=key, size=int(head.get("ContentLength", 0)))

    async def iter_s3(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes, streamed (each read in a thread)."""
        assert self.settings.s3 is not None
        obj = await asyncio.to_thread(self._client().get_object,
                                      Bucket=self.settings.s3.bucket, Key=key)
        body = obj["Body"]
        try:
            while chunk := await asyncio.to_thread(body.read, CHUNK):
                yield chunk
        finally:
            body.close()

    async def download(self, key: str, dest: str) -> None:
        assert self.settings.s3 is not None
        await asyncio.to_thread(self._client().download_file, self.settings.s3.bucket, key, dest)

    # --- retention ----------------------------------------------------------------------------
    async def sweep(self, now: float | None = None) -> int:
        """Delete recordings (and stale partial files) older than `retention_days`; returns
        how many were deleted."""
        cutoff = (time.time() if now is None else now) - self.settings.retention_days * 86400
        return await asyncio.to_thread(self._sweep, cutoff)

    def _sweep(self, cutoff: float) -> int:
        deleted = 0
        for path in self._local_files():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    deleted += 1
            except OSError as exc:
                log.warning("retention: could not delete %s: %s", path, exc)
        if self.settings.s3 is not None:
            deleted += self._sweep_s3(cutoff)
        if deleted:
            log.info("retention: deleted %d recording(s) older than %g days", deleted,
                     self.settings.retention_days)
        return deleted

    def _local_files(self) -> Iterator[Path]:
        for folder in (self.dir, self.dir / PARTIAL):
            if folder.is_dir():
                yield from (p for p in folder.glob("*.wav") if p.is_file())

    def _sweep_s3(self, cutoff: float) -> int:
        s3 = self.settings.s3
        assert s3 is not None
        client = self._client()
        old: list[dict[str, str]] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket,
                                                                       Prefix=s3.prefix):
            for obj in page.get("Contents", ()):
                if obj["Key"].endswith(".wav") and obj["LastModified"].timestamp() < cutoff:
                    old.append({"Key": obj["Key"]})
        for i in range(0, len(old), 1000):
            client.delete_objects(Bucket=s3.bucket, Delete={"Objects": old[i:i + 1000]})
        return len(old)

    # --- S3 client ----------------------------------------------------------------------------
    def _client(self) -> Any:
        if self._s3 is None:
            import boto3

            s3 = self.settings.s3
            assert s3 is not None
            secret = s3.secret_access_key.get_secret_value() if s3.secret_access_key else None
            self._s3 = boto3.session.Session().client(
                "s3", endpoint_url=s3.endpoint_url, region_name=s3.region,
                aws_access_key_id=s3.access_key_id, aws_secret_access_key=secret)
        return self._s3


async def sweep_forever(store: RecordingStore, every_s: float = SWEEP_EVERY_S) -> None:
    """Retention: a sweep now, then one every `every_s`; a failed sweep is logged and retried
    at the next."""
    while True:
        try:
            await store.sweep()
        except Exception as exc:
            log.warning("retention sweep of recordings failed: %s", exc)
        await asyncio.sleep(every_s)


@contextlib.asynccontextmanager
async def recordings_component(app: Any, state: Any) -> AsyncIterator[RecordingStore]:
    """Lifecycle (app.main.COMPONENTS): the process's recording store, and its retention."""
    store = RecordingStore(state.settings.recordings)
    state.recordings = store
    task = asyncio.create_task(sweep_forever(store), name="recordings-retention")
    try:
        yield store
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
