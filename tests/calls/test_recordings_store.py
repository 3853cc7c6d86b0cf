"""The recording store: local files and S3 (a local moto server speaking the S3 protocol),
retention sweeps of both, and the sweep the server runs at start."""

from __future__ import annotations

import asyncio
import os
import time
import wave
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi import FastAPI

from app.calls.recordings import PARTIAL, RecordingStore, recordings_component
from app.config import RecordingsSettings, S3Settings

DAY = 86400.0


def write_wav(path: Path, seconds: float = 0.5, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x01\x00" * 2 * int(rate * seconds))
    return path


def size(path: str | Path) -> int:
    return Path(path).stat().st_size


def exists(path: Path) -> bool:
    return path.exists()


def age(path: Path, days: float) -> None:
    t = time.time() - days * DAY
    os.utime(path, (t, t))


def s3_settings(endpoint: str, bucket: str, tmp_path: Path, **kw: Any) -> RecordingsSettings:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    client.create_bucket(Bucket=bucket)
    return RecordingsSettings(dir=str(tmp_path / "rec"), s3=S3Settings(
        endpoint_url=endpoint, bucket=bucket, prefix="calls/", access_key_id="test",
        secret_access_key="test", region="us-east-1"), **kw)


async def test_local_store_moves_the_partial_file_into_place(tmp_path: Path) -> None:
    store = RecordingStore(RecordingsSettings(dir=str(tmp_path / "rec")))
    partial = Path(store.partial_path("s1"))
    assert partial.parent == tmp_path / "rec" / PARTIAL
    write_wav(partial)
    stored = await store.store("s1", str(partial))
    assert stored.location == str(tmp_path / "rec" / "s1.wav")
    assert stored.bytes == size(stored.location)
    assert not exists(partial)
    found = await store.locate("s1")
    assert found is not None and found.path == Path(stored.location)
    assert await store.locate("s2") is None
    assert await store.locate("../etc/passwd") is None


async def test_local_retention_deletes_only_old_recordings(tmp_path: Path) -> None:
    store = RecordingStore(RecordingsSettings(dir=str(tmp_path), retention_days=30))
    (tmp_path / PARTIAL).mkdir()
    old = write_wav(tmp_path / "old.wav")
    new = write_wav(tmp_path / "new.wav")
    stale_partial = write_wav(tmp_path / PARTIAL / "crashed-x.wav")
    other = tmp_path / "notes.txt"
    other.write_text("keep")
    age(old, 31)
    age(new, 29)
    age(stale_partial, 40)
    age(other, 400)
    assert await store.sweep() == 2
    assert not old.exists() and not stale_partial.exists()
    assert new.exists() and other.exists()


async def test_retention_runs_at_startup(tmp_path: Path) -> None:
    old = write_wav(tmp_path / "old.wav")
    age(old, 3)

    class State:
        settings: Any = type("S", (), {"recordings": RecordingsSettings(
            dir=str(tmp_path), retention_days=2)})()
        recordings: Any = None

    state = State()
    async with recordings_component(FastAPI(), state) as store:
        assert state.recordings is store
        for _ in range(100):
            if not old.exists():
                break
            await asyncio.sleep(0.02)
    assert not old.exists()


async def test_s3_store_read_back_and_retention(s3_endpoint: str, tmp_path: Path) -> None:
    store = RecordingStore(s3_settings(s3_endpoint, "pb-store", tmp_path, retention_days=30))
    partial = write_wav(Path(store.partial_path("s1")))
    data = partial.read_bytes()
    stored = await store.store("s1", str(partial))
    assert stored.location == "calls/s1.wav" and stored.bytes == len(data)
    assert not partial.exists()
    found = await store.locate("s1")
    assert found is not None and found.key == "calls/s1.wav" and found.size == len(data)
    assert await store.locate("missing") is None
    assert b"".join([c async for c in store.iter_s3("calls/s1.wav")]) == data
    # Nothing is 30 days old yet; 31 days from now it is.
    assert await store.sweep() == 0
    assert await store.sweep(now=time.time() + 31 * DAY) == 1
    assert await store.locate("s1") is None


async def test_s3_upload_failure_raises_and_removes_the_partial(tmp_path: Path) -> None:
    settings = RecordingsSettings(dir=str(tmp_path), s3=S3Settings(
        endpoint_url="http://127.0.0.1:9", bucket="nope", access_key_id="x",
        secret_access_key="y", region="us-east-1"))
    store = RecordingStore(settings)
    partial = write_wav(Path(store.partial_path("s1")))
    with pytest.raises(Exception):  # noqa: B017 - whatever boto3 raises for a dead endpoint
        await store.store("s1", str(partial))
    assert not partial.exists()


def test_settings_are_validated() -> None:
    from pydantic import ValidationError

    from app.agent_config import AgentConfig
    from app.config import ConfigError, load_settings

    with pytest.raises(ValidationError) as exc:
        AgentConfig.model_validate({"name": "a", "prompt": "p",
                                    "recording": {"enabled": True, "channels": "quad"}})
    assert exc.value.errors()[0]["loc"] == ("recording", "channels")
    with pytest.raises(ValidationError) as exc:
        AgentConfig.model_validate({"name": "a", "prompt": "p", "recording": {"on": True}})
    assert exc.value.errors()[0]["loc"] == ("recording", "on")
    cfg = AgentConfig.model_validate({"name": "a", "prompt": "p",
                                      "recording": {"enabled": True, "consent_message": " "}})
    assert cfg.recording.consent_message is None and cfg.recording.channels == "stereo"
    with pytest.raises(ConfigError, match=r"recordings\.retention_days"):
        load_settings(recordings={"retention_days": 0})
    with pytest.raises(ConfigError, match=r"recordings\.s3\.endpoint_url"):
        load_settings(recordings={"s3": {"bucket": "b", "endpoint_url": "ftp://x"}})
    secret = load_settings(recordings={"s3": {"bucket": "b", "secret_access_key": "shh"}})
    assert "shh" not in repr(secret.recordings)
