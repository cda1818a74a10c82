"""Who is sending: the one place where the FHIR door decides a request's sender (facility, application).

The sender is never taken from the payload: it comes from the credential. A static bearer token, a JWT
client (its ``sub``) and a client-certificate subject are each bound to exactly one sender in the
settings; a request that names another sender (``X-Affluent-Sender``) is refused with 403, and so is
one whose certificate and token disagree. Static tokens are kept as SHA-256 digests and compared in
constant time, so neither the settings nor the timing of a refusal reveal a valid token.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Final

import jwt

from affluent.core.auth import token_digest as token_digest  # what goes in token_sha256
from affluent.core.settings import FhirRestSettings
from connectors.fhir_rest.intake import Refusal
from formats.fhir.common import Issue

SENDER_HEADER: Final = "X-Affluent-Sender"
REALM: Final = 'Bearer realm="affluent"'


@dataclass(frozen=True, slots=True)
class Sender:
    facility: str
    application: str
    credential: str  # token | jwt | mtls: how it was established, for metrics and the raw record

    @property
    def name(self) -> str:
        return f"{self.facility}|{self.application}"


class Unauthenticated(Refusal):
    """401: the answer carries ``WWW-Authenticate`` (RFC 6750)."""

    def __init__(self, diagnostics: str, error: str | None = None) -> None:
        super().__init__(401, Issue("login", diagnostics))
        self.error = error
        self.challenge = f'{REALM}, error="{error}"' if error else REALM

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.issues[0].diagnostics, self.error))


def _split(sender: str) -> tuple[str, str]:
    facility, application = sender.split("|", 1)
    return facility, application


class Authenticator:
    def __init__(
        self, settings: FhirRestSettings, jwks: jwt.PyJWKSet | jwt.PyJWKClient | None = None
    ) -> None:
        self._tokens = [(bytes.fromhex(digest), sender) for digest, sender in settings.token_sha256.items()]
        self._settings = settings
        self._jwks = jwks if jwks is not None else _jwks_of(settings)

    @property
    def needs_thread(self) -> bool:
        """A JWKS URL may be fetched while checking a JWT: the caller runs :meth:`authenticate` off-loop."""
        return isinstance(self._jwks, jwt.PyJWKClient)

    def authenticate(
        self, authorization: str | None, tls_subject: str | None, claimed: str | None = None
    ) -> Sender:
        cert_sender = self._settings.tls_subjects.get(tls_subject) if tls_subject else None
        sender: Sender | None = None
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("only Bearer credentials are accepted", "invalid_request")
            sender = self._bearer(token.strip())
            if cert_sender is not None and cert_sender != sender.name:
                raise Refusal(
                    403, Issue("forbidden", "the client certificate and the token name different senders")
                )
        elif cert_sender is not None:
            sender = Sender(*_split(cert_sender), "mtls")
        if sender is None:
            raise Unauthenticated("authentication required")
        if claimed is not None and claimed.strip() != sender.name:
            raise Refusal(403, Issue("forbidden", "this credential may not write as the named sender"))
        return sender

    def _bearer(self, token: str) -> Sender:
        if token.count(".") == 2 and self._jwks is not None:
            return self._jwt(token)
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        found: str | None = None
        for known, sender in self._tokens:  # every entry compared: the time does not depend on which matched
            if hmac.compare_digest(known, digest):
                found = sender
        if found is None:
            raise Unauthenticated("the token is not valid", "invalid_token")
        return Sender(*_split(found), "token")

    def _jwt(self, token: str) -> Sender:
        s = self._settings
        if not s.jwt_audience:  # settings built without validation: no audience, no JWT
            raise Unauthenticated("the token is not valid", "invalid_token")
        try:
            if isinstance(self._jwks, jwt.PyJWKClient):
                key: Any = self._jwks.get_signing_key_from_jwt(token).key
            else:
                assert self._jwks is not None
                kid = jwt.get_unverified_header(token).get("kid")
                key = self._jwks[kid].key if kid else self._jwks.keys[0].key
            claims = jwt.decode(
                token,
                key,
                algorithms=s.jwt_algorithms,
                issuer=s.jwt_issuer,
                audience=s.jwt_audience,
                # aud always: a token the issuer minted for another service must not open this door
                # (settings refuse a JWT configuration without jwt_audience).
                options={"require": ["exp", "iss", "sub", "aud"], "verify_aud": True},
            )
        except (jwt.PyJWTError, KeyError, ValueError):
            # The library's text may quote claims; the reason stays generic.
            raise Unauthenticated("the token is not valid", "invalid_token") from None
        sender = s.jwt_subjects.get(str(claims.get("sub")))
        if sender is None:
            raise Refusal(403, Issue("forbidden", "this client is not bound to a sender"))
        return Sender(*_split(sender), "jwt")


def _jwks_of(settings: FhirRestSettings) -> jwt.PyJWKSet | jwt.PyJWKClient | None:
    if settings.jwt_jwks_file is not None:
        return jwt.PyJWKSet.from_json(settings.jwt_jwks_file.read_text(encoding="utf-8"))
    if settings.jwt_jwks_url is not None:
        return jwt.PyJWKClient(settings.jwt_jwks_url, cache_jwk_set=True, lifespan=300)
    return None
