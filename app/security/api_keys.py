"""API key format and hashing.

A key is `pb_` + 43 url-safe random characters (256 bits). Only its sha256 is stored; the
first characters are kept as a recognisable prefix for listings.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "pb_"
# Characters of the secret shown in listings (including "pb_").
DISPLAY_PREFIX_LEN = 10


def generate() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    return secret[:DISPLAY_PREFIX_LEN]


def matches(secret: str, expected: str) -> bool:
    """Constant-time comparison of two secrets (or two hashes)."""
    return hmac.compare_digest(secret.encode(), expected.encode())
