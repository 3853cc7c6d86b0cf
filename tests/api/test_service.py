"""Service behaviour: probes, problem documents for errors, request ids, restarts."""

from __future__ import annotations

import os
import stat

import httpx
from sqlalchemy import text

from app.db.repos import sessions as sessions_repo
from app.demo_agent import DEMO_AGENT_ID
from app.main import create_app
from providers import registry
from tests.api.providers import ApiTestLLM, ApiTestSTT, ApiTestTTS, agent_config


async def _client(app):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_probes(client, app):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["status"] == "ready"
    assert r.json()["checks"]["database"] == "ok"

    state = app.state.pb
    registered = list(state.ready_checks)  # other subsystems' checks

    def models_loaded() -> bool:
        return False

    async def events_running() -> bool:
        return True

    state.add_ready_check(models_loaded)
    state.add_ready_check(events_running)
    r = await client.get("/readyz")
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert (checks["database"], checks["models_loaded"], checks["events_running"]) == (
        "ok", "not ready", "ok")
    state.ready_checks[:] = registered
    assert (await client.get("/readyz")).status_code == 200

    await state.drain()  # no hooks: returns at once, but the service stops being ready
    r = await client.get("/readyz")
    assert r.status_code == 503 and "draining" in r.json()["checks"]


async def test_readyz_is_degraded_while_the_database_is_unreachable(app, client):
    """Calls are still admitted (200): they are answered from the cache and their records wait
    in the outbox; the status and the check say the database is away."""
    from app.config import DatabaseSettings
    from app.db.engine import open_database

    state = app.state.pb
    real = state.db
    # Nothing listens on port 1: connecting fails at once.
    state.db = open_database(DatabaseSettings(url="postgresql+asyncpg://pb@127.0.0.1:1/pb"))
    try:
        r = await client.get("/readyz")
    finally:
        await state.db.dispose()
        state.db = real
    assert r.status_code == 200
    assert r.json()["status"] == "degraded: database"
    assert r.json()["checks"]["database"].startswith("degraded: database unreachable")


async def test_unhandled_error_is_500_problem_without_internals(settings):
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("internal detail: password=hunter2")

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            r = await c.get("/boom", headers={"X-Request-ID": "req-123"})
    assert r.status_code == 500
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "hunter2" not in r.text and "RuntimeError" not in r.text
    assert r.json()["request_id"] == "req-123"
    assert r.headers["x-request-id"] == "req-123"


async def test_request_id_round_trip(client):
    r = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = await client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert r.headers["x-request-id"] != "bad id with spaces"
    assert len(r.headers["x-request-id"]) == 16


async def test_unknown_route_is_problem(client):
    r = await client.get("/nope")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")


async def test_restart_loses_nothing(settings_factory, tmp_path):
    # No configured key: the generated key file must carry credentials across the restart.
    settings = settings_factory(security={"secret_key": None})
    headers = {"Authorization": "Bearer " + settings.security.admin_api_key.get_secret_value()}

    app1 = create_app(settings)
    async with app1.router.lifespan_context(app1), await _client(app1) as c:
        agent = (await c.post("/v1/agents", json=agent_config(), headers=headers)).json()
        await c.patch(f"/v1/agents/{agent['id']}", json={"prompt": "v2"}, headers=headers)
        await c.put("/v1/numbers/+14155550100", json={"agent_id": agent["id"]}, headers=headers)
        await c.put("/v1/credentials/k", json={"value": "secret-value-1"}, headers=headers)
        key = (await c.post("/v1/api-keys", json={"name": "x"}, headers=headers)).json()
        async with app1.state.pb.db.transaction() as s:
            live = await sessions_repo.create(s, status="active", call_uuid="c1")
            ringing = await sessions_repo.create(s, status="ringing", call_uuid="c2")
            done = await sessions_repo.create(s, status="ended", call_uuid="c3")

    key_file = tmp_path / "secret.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600

    app2 = create_app(settings)
    async with app2.router.lifespan_context(app2), await _client(app2) as c:
        user = {"Authorization": f"Bearer {key['secret']}"}
        r = await c.get(f"/v1/agents/{agent['id']}", headers=user)
        assert r.json()["version"] == 2 and r.json()["config"]["prompt"] == "v2"
        v1 = await c.get(f"/v1/agents/{agent['id']}/versions/1", headers=user)
        assert v1.json()["config"]["prompt"] == agent["config"]["prompt"]
        r = await c.get("/v1/numbers/+14155550100", headers=user)
        assert r.json()["agent_id"] == agent["id"]
        state = app2.state.pb
        async with state.db.session() as s:
            ct = (await s.execute(text("SELECT ciphertext FROM credentials"))).scalar_one()
            assert state.crypto.decrypt(ct) == "secret-value-1"
            statuses = {
                x.id: (x.status, x.end_reason)
                for x in [await sessions_repo.get(s, i) for i in (live.id, ringing.id, done.id)]
            }
    assert statuses == {
        live.id: ("interrupted", "server_restart"),
        ringing.id: ("interrupted", "server_restart"),
        done.id: ("ended", None),
    }


async def test_demo_agent_created_once_on_first_start(settings_factory, monkeypatch):
    # Stand-ins for the embedded providers, under their real names, for this test only.
    for cls, name in ((ApiTestSTT, "whisper"), (ApiTestLLM, "llama_cpp"),
                      (ApiTestTTS, "piper")):
        monkeypatch.setitem(registry._extra, (cls.kind, name), cls)
    settings = settings_factory(demo={"create_on_start": True})
    headers = {"Authorization": "Bearer " + settings.security.admin_api_key.get_secret_value()}
    for _ in range(2):
        app = create_app(settings)
        async with app.router.lifespan_context(app), await _client(app) as c:
            r = await c.get("/v1/agents", headers=headers)
            assert [a["id"] for a in r.json()["items"]] == [DEMO_AGENT_ID]
            cfg = r.json()["items"][0]["config"]
            assert "Phonebooth Dental" in cfg["prompt"]
            assert (cfg["stt"]["provider"], cfg["llm"]["provider"], cfg["tts"]["provider"]) == (
                "whisper", "llama_cpp", "piper")
            r = await c.get(f"/v1/agents/{DEMO_AGENT_ID}", headers=headers)
            assert r.status_code == 200


async def test_demo_agent_skipped_when_store_has_agents(settings_factory, app, client,
                                                        admin_headers, tmp_path):
    await client.post("/v1/agents", json=agent_config(), headers=admin_headers)
    # A second server on the same database while the first runs: its own outbox file.
    settings = settings_factory(demo={"create_on_start": True},
                                outbox={"path": str(tmp_path / "outbox-2.db")})
    app2 = create_app(settings)
    async with app2.router.lifespan_context(app2), await _client(app2) as c:
        r = await c.get("/v1/agents", headers=admin_headers)
        assert DEMO_AGENT_ID not in [a["id"] for a in r.json()["items"]]


async def test_migrate_on_start_builds_blank_database(blank_database_url, settings_factory):
    settings = settings_factory(database={"url": blank_database_url})
    app = create_app(settings)
    async with app.router.lifespan_context(app), await _client(app) as c:
        assert (await c.get("/readyz")).status_code == 200
        headers = {"Authorization": "Bearer "
                   + settings.security.admin_api_key.get_secret_value()}
        r = await c.post("/v1/agents", json=agent_config(), headers=headers)
        assert r.status_code == 201
