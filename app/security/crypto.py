"""Encryption of credentials at rest, keyed from `security.secret_key`.

Keys for different purposes are derived with HKDF-SHA256 from the one configured secret, so a
key used to sign stream tokens can never decrypt credentials and vice versa.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

CREDENTIALS_PURPOSE = "phonebooth/credentials/v1"


class DecryptError(Exception):
    """Ciphertext that this secret key cannot open (key changed, or data corrupted)."""


def derive_key(secret: str | bytes, purpose: str, length: int = 32) -> bytes:
    material = secret.encode() if isinstance(secret, str) else secret
    return HKDF(
        algorithm=hashes.SHA256(), length=length, salt=None, info=purpose.encode()
    ).derive(material)


class SecretBox:
    """Encrypts/decrypts short secrets (credential values) with Fernet (AES-CBC + HMAC)."""

    def __init__(self, secret_key: str) -> None:
        if not secret_key:
            raise ValueError("secret key must not be empty")
        self._secret = secret_key.encode()
        fernet_key = derive_key(self._secret, CREDENTIALS_PURPOSE)
        self._fernet = Fernet(base64.urlsafe_b64encode(fernet_key))

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, ciphertext: bytes) -> str:
        try:
            return self._fernet.decrypt(ciphertext).decode()
        except InvalidToken:
            raise DecryptError(
                "cannot decrypt: the secret key differs from the one that encrypted it"
            ) from None

    def derive(self, purpose: str, length: int = 32) -> bytes:
        """A key for another purpose (e.g. "plivo/stream-token/v1"), independent of this box's."""
        if purpose == CREDENTIALS_PURPOSE:
            raise ValueError("that purpose is reserved for credential encryption")
        return derive_key(self._secret, purpose, length)

    def __repr__(self) -> str:  # never show key material
        return "SecretBox(<redacted>)"
