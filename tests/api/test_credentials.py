"""Credentials are write-only: encrypted at rest, never echoed, never logged."""

from __future__ import annotations

import io
import logging

from sqlalchemy import select

from app.db.models import Credential
from app.logging_setup import configure_logging

SECRET = "sk-live-THIS-MUST-NEVER-APPEAR-0123456789"


async def test_credential_never_echoed_and_encrypted(client, admin_headers, app, caplog):
    caplog.set_level(logging.DEBUG)
    stream = io.StringIO()
    configure_logging(app.state.pb.settings.model_copy(
        update={"server": app.state.pb.settings.server.model_copy(update={"log_level": "debug"})}
    ), stream=stream)

    r = await client.put("/v1/credentials/openai", json={"value": SECRET}, headers=admin_headers)
    assert r.status_code == 201
    assert SECRET not in r.text
    assert set(r.json()) == {"name", "created_at", "updated_at"}
    r = await client.put("/v1/credentials/openai", json={"value": SECRET + "2"},
                         headers=admin_headers)
    assert r.status_code == 200

    responses = [
        await client.get("/v1/credentials", headers=admin_headers),
        await client.get("/v1/credentials/openai", headers=admin_headers),
        # A validation error must not echo the submitted value either.
        await client.put("/v1/credentials/openai", json={"value": SECRET, "extra": SECRET},
                         headers=admin_headers),
        await client.put("/v1/credentials/bad name!", json={"value": SECRET},
                         headers=admin_headers),
    ]
    assert [x.status_code for x in responses] == [200, 200, 422, 422]
    for x in responses:
        assert SECRET not in x.text
    assert responses[0].json()["items"][0]["name"] == "openai"

    # Encrypted at rest, and decryptable with the server's key.
    state = app.state.pb
    async with state.db.session() as s:
        row = (await s.execute(select(Credential))).scalar_one()
    assert SECRET.encode() not in row.ciphertext
    assert state.crypto.decrypt(row.ciphertext) == SECRET + "2"

    logging.getLogger("test").info("provider said: bad key %s", SECRET)
    assert SECRET not in stream.getvalue()
    assert "[REDACTED]" in stream.getvalue()
    # Nothing we logged ourselves carried it in the first place (caplog sees raw records).
    assert SECRET not in caplog.text.replace(f"bad key {SECRET}", "")

    r = await client.delete("/v1/credentials/openai", headers=admin_headers)
    assert r.status_code == 204
    r = await client.get("/v1/credentials", headers=admin_headers)
    assert r.json()["items"] == []
    r = await client.delete("/v1/credentials/openai", headers=admin_headers)
    assert r.status_code == 404
