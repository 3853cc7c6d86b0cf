"""A private PostgreSQL cluster for tests that stop and start the database under a live server.

`initdb` + `pg_ctl` in a temporary directory, listening on its own port on 127.0.0.1 (never the
shared server). initdb refuses to run as root, so as root the cluster runs as the `postgres`
user (via `runuser`) in a directory that user owns. `PG_MISSING` says why it cannot run here
(no server binaries), for a clean skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _bindir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").is_file():
            return Path(candidate)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


BIN = _bindir()


def _missing() -> str | None:
    if BIN is None or not (BIN / "pg_ctl").is_file():
        return "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run initdb as"
        if shutil.which("runuser") is None:
            return "running as root and `runuser` is missing"
    return None


PG_MISSING = _missing()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateCluster:
    def __init__(self) -> None:
        assert BIN is not None
        self.root = Path(tempfile.mkdtemp(prefix="pb-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8")
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{self.root}'\nfsync = off\n"
                    "max_connections = 50\n")

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(BIN / tool) if BIN else tool, *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self) -> None:
        """Stop now (`-m fast`): open connections are cut, like a database going away."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-m", "fast", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        deadline = time.monotonic() + 30
        while True:
            try:
                self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                          name)
                return self.url(name)
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def destroy(self) -> None:
        if self.running():
            try:
                self.stop()
            except Exception:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
