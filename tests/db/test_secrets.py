"""Credentials round-trip through encryption and resolve for providers."""

from __future__ import annotations

import io
import logging

import pytest

from app.calls.secrets import SecretNotFound, SecretResolver
from app.config import Settings
from app.db.repos import credentials
from app.logging_setup import configure_logging
from app.security.crypto import DecryptError, SecretBox
from providers.base import SecretRef


def test_secret_box_keys_are_independent() -> None:
    box = SecretBox("k1")
    token = box.encrypt("value")
    assert box.decrypt(token) == "value"
    with pytest.raises(DecryptError):
        SecretBox("k2").decrypt(token)
    assert box.derive("plivo/stream-token/v1") != box.derive("other/v1")
    assert len(box.derive("x", 16)) == 16
    assert "k1" not in repr(box)


async def test_resolver(database, monkeypatch) -> None:
    box = SecretBox("server-key")
    async with database.transaction() as s:
        await credentials.put(s, "deepgram", box.encrypt("dg-secret-value-123"))
    resolve = SecretResolver(database, box)
    assert await resolve(SecretRef(credential="deepgram")) == "dg-secret-value-123"
    monkeypatch.setenv("PB_TEST_SECRET", "env-secret-value-456")
    assert await resolve(SecretRef(env="PB_TEST_SECRET")) == "env-secret-value-456"
    with pytest.raises(SecretNotFound, match="'nope'"):
        await resolve(SecretRef(credential="nope"))
    with pytest.raises(SecretNotFound, match="PB_UNSET"):
        await resolve(SecretRef(env="PB_UNSET"))
    with pytest.raises(SecretNotFound):
        await resolve(SecretRef())

    # Resolved values are masked if anything logs them later.
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = configure_logging(Settings(), stream=stream)
    try:
        logging.getLogger("providers.x").warning("auth failed with dg-secret-value-123")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert "dg-secret-value-123" not in stream.getvalue()
