"""Short-lived access tokens: JWTs signed with HS256 (joserfc), checked without a database query."""

from __future__ import annotations

import functools
import time
import uuid
from dataclasses import dataclass

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from portal import parts

ISSUER = "gpu-portal"
ALGORITHM = "HS256"


class InvalidToken(Exception):
    """The token is malformed, forged, expired or not an access token."""


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID
    roles: frozenset[str]
    expires_at: int


@functools.lru_cache(maxsize=8)
def _key(signing_key: str) -> OctKey:
    return OctKey.import_key(signing_key)


def _signing_key() -> OctKey:
    return _key(parts.current().settings.signing_key())


_claims_registry = jwt.JWTClaimsRegistry(
    iss={"essential": True, "value": ISSUER},
    sub={"essential": True},
    sid={"essential": True},
    exp={"essential": True},
    typ={"essential": True, "value": "access"},
)


def issue_access_token(user_id: uuid.UUID, session_id: uuid.UUID, roles: set[str]) -> tuple[str, int]:
    ttl = parts.current().settings.access_token_ttl_s
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": str(user_id),
        "sid": str(session_id),
        "roles": sorted(roles),
        "typ": "access",
        "iat": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode({"alg": ALGORITHM}, claims, _signing_key()), ttl


def decode_access_token(token: str) -> AccessClaims:
    try:
        decoded = jwt.decode(token, _signing_key(), algorithms=[ALGORITHM])
        _claims_registry.validate(decoded.claims)
        claims = decoded.claims
        return AccessClaims(
            user_id=uuid.UUID(claims["sub"]),
            session_id=uuid.UUID(claims["sid"]),
            roles=frozenset(claims.get("roles", [])),
            expires_at=int(claims["exp"]),
        )
    except (JoseError, ValueError, KeyError, TypeError) as error:
        raise InvalidToken(str(error) or type(error).__name__) from None
