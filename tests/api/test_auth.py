"""Bearer API keys on /v1: admin key, stored keys, revocation."""

from __future__ import annotations

PROBLEM = "application/problem+json"


async def test_no_key_is_401_problem(client):
    r = await client.get("/v1/agents")
    assert r.status_code == 401
    assert r.headers["content-type"].startswith(PROBLEM)
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["title"] == "Unauthorized"


async def test_wrong_key_and_wrong_scheme_are_401(client):
    for value in ("Bearer pb_not_a_real_key_123456", "Bearer nonsense", "Basic dXNlcjpwYXNz"):
        r = await client.get("/v1/agents", headers={"Authorization": value})
        assert r.status_code == 401, value


async def test_health_needs_no_key(client):
    assert (await client.get("/healthz")).status_code == 200


async def test_created_key_works_until_revoked(client, admin_headers):
    r = await client.post("/v1/api-keys", json={"name": "ci"}, headers=admin_headers)
    assert r.status_code == 201
    created = r.json()
    secret = created["secret"]
    assert secret.startswith("pb_") and len(secret) > 40
    assert created["prefix"] == secret[:10]
    headers = {"Authorization": f"Bearer {secret}"}

    assert (await client.get("/v1/agents", headers=headers)).status_code == 200

    listing = (await client.get("/v1/api-keys", headers=headers)).json()["items"]
    assert [k["id"] for k in listing] == [created["id"]]
    assert "secret" not in listing[0] and "key_hash" not in listing[0]
    assert secret not in str(listing)
    assert listing[0]["last_used_at"] is not None

    r = await client.delete(f"/v1/api-keys/{created['id']}", headers=admin_headers)
    assert r.status_code == 204
    r = await client.get("/v1/agents", headers=headers)
    assert r.status_code == 401
    key = (await client.get(f"/v1/api-keys/{created['id']}", headers=admin_headers)).json()
    assert key["revoked_at"] is not None


async def test_revoke_unknown_key_is_404(client, admin_headers):
    r = await client.delete("/v1/api-keys/nope", headers=admin_headers)
    assert r.status_code == 404


async def test_no_admin_key_configured_means_only_stored_keys(settings_factory):
    import httpx

    from app.main import create_app
    from tests.conftest import TEST_ADMIN_KEY

    app = create_app(settings_factory(security={"admin_api_key": None}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            r = await c.get("/v1/agents", headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"})
            assert r.status_code == 401
