"""Resolving `SecretRef`s for providers: stored credentials (decrypted) or environment variables.

The call host passes `SecretResolver(state.db, state.crypto)` as `ProviderContext.resolve_secret`.
Every value handed out is registered with the log redactor first.
"""

from __future__ import annotations

import os

from app.db.engine import Database
from app.db.repos import credentials as credentials_repo
from app.logging_setup import register_secret
from app.security.crypto import SecretBox
from providers.base import SecretRef


class SecretNotFound(LookupError):
    """The referenced credential or environment variable does not exist (message names it,
    never a value)."""


class SecretResolver:
    def __init__(self, db: Database, box: SecretBox) -> None:
        self._db = db
        self._box = box

    async def __call__(self, ref: SecretRef) -> str:
        if ref.credential:
            async with self._db.session() as s:
                row = await credentials_repo.get(s, ref.credential)
            if row is None:
                raise SecretNotFound(f"credential '{ref.credential}' does not exist")
            value = self._box.decrypt(row.ciphertext)
        elif ref.env:
            env_value = os.environ.get(ref.env)
            if not env_value:
                raise SecretNotFound(f"environment variable {ref.env} is not set")
            value = env_value
        else:
            raise SecretNotFound("secret reference names neither a credential nor an env var")
        register_secret(value)
        return value
