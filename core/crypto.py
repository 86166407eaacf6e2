"""Secrets at rest: MultiFernet keyed from RETENSHUN_SECRET_KEY; hashing for tokens.

RETENSHUN_SECRET_KEY may hold several comma-separated passphrases: the first
encrypts, every one decrypts. Rotate by prepending a new one, running
`retenshun rotate-secrets`, then dropping the old one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def _fernet_for(passphrase: str) -> Fernet:
    # HKDF turns any passphrase into the 32-byte key Fernet needs.
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"retenshun-fernet", info=b"secrets-at-rest"
    ).derive(passphrase.encode())
    return Fernet(base64.urlsafe_b64encode(key))


class SecretBox:
    def __init__(self, secret_key: str):
        passphrases = [p.strip() for p in secret_key.split(",") if p.strip()]
        if not passphrases:
            raise ValueError("RETENSHUN_SECRET_KEY is empty")
        self._fernet = MultiFernet([_fernet_for(p) for p in passphrases])

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise ValueError(
                "a stored secret cannot be decrypted with RETENSHUN_SECRET_KEY "
                "(was the key changed without keeping the old one?)"
            ) from exc

    def rotate(self, token: str) -> str:
        return self._fernet.rotate(token.encode()).decode()


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def hmac_sha256_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
