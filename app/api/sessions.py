"""/v1/sessions: call history with turns, tool calls and usage (read-only), and recordings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from starlette.background import BackgroundTask
from starlette.responses import FileResponse, Response, StreamingResponse

from app.api.deps import DbSession, State
from app.api.problems import ApiProblem, not_found, problems, unprocessable
from app.api.schemas import (
    SessionDetail,
    SessionOut,
    SessionPageOut,
    SessionStatus,
    ToolCallOut,
    TurnOut,
    UsageRecordOut,
)
from app.api.timeparams import From, To, as_utc
from app.calls.recordings import RecordingStore
from app.db.repos import agents as agents_repo
from app.db.repos import sessions as sessions_repo
from app.db.repos import usage as usage_repo

router = APIRouter(prefix="/sessions", tags=["sessions"])


@router.get("", response_model=SessionPageOut)
async def list_sessions(
    s: DbSession,
    agent_id: str | None = None,
    status: SessionStatus | None = None,
    since: From = None,
    until: To = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> SessionPageOut:
    """Newest first. Follow `next_cursor` for older sessions."""
    try:
        page = await sessions_repo.list_sessions(
            s, agent_id=agent_id, status=status, since=as_utc(since), until=as_utc(until),
            limit=limit, cursor=cursor,
        )
    except sessions_repo.BadCursor:
        raise unprocessable([{"field": "cursor", "message": "invalid cursor"}]) from None
    return SessionPageOut(
        items=[SessionOut.model_validate(r) for r in page.items], next_cursor=page.next_cursor
    )


@router.get("/{session_id}", response_model=SessionDetail, responses=problems(404))
async def get_session(session_id: str, s: DbSession) -> SessionDetail:
    row = await sessions_repo.get(s, session_id)
    if row is None:
        raise not_found("session", session_id)
    base = SessionOut.model_validate(row).model_dump()
    return SessionDetail(
        **base,
        state=row.state or {},
        turns=[TurnOut.model_validate(t) for t in await sessions_repo.list_turns(s, row.id)],
        tool_calls=[
            ToolCallOut.model_validate(t) for t in await sessions_repo.list_tool_calls(s, row.id)
        ],
        usage=[UsageRecordOut.model_validate(u) for u in await usage_repo.for_session(s, row.id)],
    )


RECORDING_MEDIA = {
    "audio/wav": {"schema": {"type": "string", "format": "binary"}},
    "audio/ogg": {"schema": {"type": "string", "format": "binary"}},
}


@router.get(
    "/{session_id}/recording", response_class=Response, responses={
        200: {"description": "The call's recording: WAV (16-bit PCM; stereo puts the caller "
                             "on the left and the agent on the right), or Ogg/Opus",
              "content": RECORDING_MEDIA},
        **problems(404)})
async def get_recording(session_id: str, s: DbSession, state: State,
                        format: Literal["wav", "opus"] = "wav") -> Response:
    """The session's recording, streamed from wherever it is stored (the server reads it from
    S3 itself; no redirect). `?format=opus` transcodes it to Ogg/Opus. 404 says why there is
    none."""
    row = await sessions_repo.get(s, session_id)
    if row is None:
        raise not_found("session", session_id)
    store: RecordingStore = state.recordings or RecordingStore(state.settings.recordings)
    found = await store.locate(session_id)
    if found is None:
        raise ApiProblem(404, await _why_no_recording(s, row, store))
    name = f"{session_id}.{'wav' if format == 'wav' else 'opus'}"
    disposition = {"Content-Disposition": f'inline; filename="{name}"'}
    if format == "wav":
        if found.path is not None:
            return FileResponse(found.path, media_type="audio/wav", headers=disposition)
        assert found.key is not None
        return StreamingResponse(store.iter_s3(found.key), media_type="audio/wav",
                                 headers={**disposition, "Content-Length": str(found.size)})
    opus = await _to_opus(store, found.path, found.key)
    return FileResponse(opus, media_type="audio/ogg", headers=disposition,
                        background=BackgroundTask(_remove, opus))


async def _why_no_recording(s: DbSession, row: object, store: RecordingStore) -> str:
    sid = str(getattr(row, "id", ""))
    status = getattr(row, "status", "")
    enabled = False
    agent_id, version = getattr(row, "agent_id", None), getattr(row, "agent_version", None)
    if agent_id and version:
        v = await agents_repo.get_version(s, agent_id, version)
        rec = (v.config or {}).get("recording") if v is not None else None
        enabled = isinstance(rec, dict) and bool(rec.get("enabled"))
    if not enabled:
        return (f"session '{sid}' was not recorded: its agent version has recording.enabled "
                "off")
    if status in ("ringing", "active"):
        return (f"session '{sid}' is still in progress: its recording is stored when the call "
                "ends")
    return (f"no recording stored for session '{sid}': storing it failed (see its "
            "recording.failed event), it is still being stored, or it was deleted after "
            f"recordings.retention_days ({store.settings.retention_days:g})")


async def _to_opus(store: RecordingStore, path: object, key: str | None) -> str:
    """The recording as Ogg/Opus in a temp file (read from S3 first when stored there)."""
    fd, out = tempfile.mkstemp(suffix=".opus")
    os.close(fd)
    source = str(path) if path is not None else None
    fetched = None
    try:
        if source is None:
            assert key is not None
            fd, fetched = tempfile.mkstemp(suffix=".wav")
            os.close(fd)
            await store.download(key, fetched)
            source = fetched
        await asyncio.to_thread(_transcode_opus, source, out)
    except BaseException:
        _remove(out)
        raise
    finally:
        if fetched is not None:
            _remove(fetched)
    return out


def _transcode_opus(src: str, dest: str) -> None:
    import soundfile as sf

    with sf.SoundFile(src) as wav, sf.SoundFile(dest, "w", samplerate=wav.samplerate,
                                                channels=wav.channels, format="OGG",
                                                subtype="OPUS") as ogg:
        for block in wav.blocks(blocksize=wav.samplerate, dtype="float32"):
            ogg.write(block)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
