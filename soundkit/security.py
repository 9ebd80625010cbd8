"""Secrets handling: token hashing, per-app identifiers and encryption at rest.

Access and refresh tokens are 256-bit random strings, so a plain SHA-256 is enough to
store them safely (a slow hash buys nothing against a search space that large) and
lets the api find a token by an indexed equality look-up.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def new_token(prefix: str = "") -> str:
    """An opaque random token (43 url-safe characters after the optional prefix)."""
    return prefix + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def derive_key(secret_key: str, purpose: str, length: int = 32) -> bytes:
    """A separate key per purpose, so one leaked derived key reveals nothing else."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None,
                info=f"soundkit:{purpose}".encode()).derive(secret_key.encode())


def _keyed_id(secret_key: str, purpose: str, scope: str, user_id: int) -> str:
    digest = hmac.new(derive_key(secret_key, purpose), f"{scope}:{user_id}".encode(),
                      hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:24]).decode().rstrip("=")


def open_id(secret_key: str, client_key: str, user_id: int) -> str:
    """The creator's id as one app sees it: stable for that app, useless to any other."""
    return _keyed_id(secret_key, "open_id", client_key, user_id)


def union_id(secret_key: str, developer_id: int, user_id: int) -> str:
    """The creator's id shared by the apps of one developer, different across developers."""
    return _keyed_id(secret_key, "union_id", str(developer_id), user_id)


def _fernet(secret_key: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(derive_key(secret_key, "at-rest")))


def encrypt(secret_key: str, plaintext: str) -> str:
    return _fernet(secret_key).encrypt(plaintext.encode()).decode()


def decrypt(secret_key: str, ciphertext: str) -> str:
    try:
        return _fernet(secret_key).decrypt(ciphertext.encode()).decode()
    except InvalidToken as error:
        raise ValueError("cannot decrypt: wrong SOUNDKIT_SECRET_KEY?") from error
