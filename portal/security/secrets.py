"""High-entropy credentials: generation, keyed hashing for storage, constant-time comparison.

Passwords are low-entropy and get argon2id (``passwords.py``); random tokens are 256-bit, so a keyed
SHA-256 (HMAC) is enough to store them and is cheap enough to check on every request.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets

from portal import parts

# Visible kinds, so a leaked credential is recognisable (and scannable) at a glance.
API_KEY_PREFIX = "gpk"
DEVICE_TOKEN_PREFIX = "gpd"
REFRESH_TOKEN_PREFIX = "gpr"
BROWSER_COOKIE_PREFIX = "gps"


def new_token(kind: str) -> str:
    return f"{kind}_{secrets.token_urlsafe(32)}"


@functools.lru_cache(maxsize=8)
def _hashing_key(signing_key: str) -> bytes:
    # Derived, so the key that hashes stored tokens is never the one that signs JWTs. Keyed by the signing
    # key: a process that is handed other parts (a bench, a test) hashes with their key, not a stale one.
    return hmac.new(signing_key.encode(), b"portal token hashing v1", hashlib.sha256).digest()


def keyed_hash(token: str) -> str:
    key = _hashing_key(parts.current().settings.signing_key())
    return hmac.digest(key, token.encode(), "sha256").hex()  # one call into OpenSSL


def matches(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(keyed_hash(token), stored_hash)
