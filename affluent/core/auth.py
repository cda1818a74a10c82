"""Static bearer tokens for affluent's HTTP endpoints, held only as SHA-256 digests.

The configuration maps a principal name (a service account such as ``dpo-chu-rouen``, never a person's
name) to the hex SHA-256 of its token, so a leaked configuration file does not hand out working tokens.
Every configured digest is compared in constant time, whatever the outcome, so the response time does
not tell an attacker how close a guess was nor which principal exists.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from typing import Final

from affluent.core.errors import ConfigError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_PRINCIPAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh random token and the digest to put in the configuration."""
    token = secrets.token_urlsafe(32)
    return token, token_digest(token)


class StaticTokens:
    """Principal → token digest; :meth:`principal` answers who a presented token belongs to."""

    def __init__(self, digests: Mapping[str, str], origin: str = "tokens") -> None:
        if not digests:
            raise ConfigError(f"{origin}: no bearer token configured; refusing to serve unauthenticated")
        self._digests: list[tuple[str, bytes]] = []
        for principal, digest in digests.items():
            if not _PRINCIPAL.match(principal):
                raise ConfigError(f"{origin}: principal names are 1-100 characters of [A-Za-z0-9._@-]")
            if not isinstance(digest, str) or not _HEX64.match(digest.lower()):
                raise ConfigError(f"{origin}: the token of {principal} must be given as a hex SHA-256 digest")
            self._digests.append((principal, bytes.fromhex(digest)))

    def principal(self, authorization: str | None) -> str | None:
        """The principal of an ``Authorization: Bearer <token>`` header, or None."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        presented = hashlib.sha256(token.strip().encode("utf-8")).digest()
        found: str | None = None
        for principal, digest in self._digests:
            if hmac.compare_digest(presented, digest) and found is None:
                found = principal
        return found


# JWT signature algorithms a JWKS can verify: asymmetric only. With an HMAC algorithm (HS256…) the
# "public" key set would be the shared secret itself, and PyJWT fails on such keys at request time.
JWT_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
