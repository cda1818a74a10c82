"""Tokens for a source: a static bearer token, or SMART Backend Services.

SMART Backend Services (client_credentials + private_key_jwt): the puller signs a short-lived client
assertion (RS384 or ES384, key from a file) whose audience is the token endpoint, exchanges it for an
access token, and fetches a new one ``refresh_margin_s`` before expiry or right after a 401.
The token endpoint comes from the source config or from ``.well-known/smart-configuration``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from affluent.core.errors import ConfigError, FhirSourceError
from connectors.fhir_poll.config import NoAuth, SmartAuth, SourceConfig, StaticTokenAuth
from connectors.fhir_poll.http import FhirHttp, TokenSource

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_S = 300  # SMART: no more than five minutes


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def load_private_key(path: Path, algorithm: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot load the SMART private key {path}: {type(exc).__name__}") from None
    if algorithm == "RS384" and isinstance(key, rsa.RSAPrivateKey):
        return key
    if algorithm == "ES384" and isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1":
        return key
    raise ConfigError(f"the SMART private key {path} does not fit {algorithm} (RSA, or EC P-384)")


def sign_jwt(header: dict[str, Any], claims: dict[str, Any], key: PrivateKey) -> str:
    """A compact JWS: RS384 (PKCS#1 v1.5) or ES384 (raw r||s, as JWS wants, not DER)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}".encode()
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA384())
    else:
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA384())))
        signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")
    return f"{signing_input.decode()}.{b64url(signature)}"


def client_assertion(auth: SmartAuth, key: PrivateKey, token_url: str, now: float) -> str:
    header: dict[str, Any] = {"alg": auth.algorithm, "typ": "JWT"}
    if auth.key_id:
        header["kid"] = auth.key_id
    claims = {
        "iss": auth.client_id,
        "sub": auth.client_id,
        "aud": token_url,
        "exp": int(now) + ASSERTION_LIFETIME_S,
        "iat": int(now),
        "jti": uuid.uuid4().hex,
    }
    return sign_jwt(header, claims, key)


class StaticTokens(TokenSource):
    def __init__(self, auth: StaticTokenAuth) -> None:
        self._value = auth.token()

    async def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._value}"}


class SmartTokens(TokenSource):
    """Access tokens from a SMART token endpoint, fetched lazily and refreshed before they expire."""

    def __init__(self, auth: SmartAuth, base_url: str, clock: Callable[[], float] = time.time) -> None:
        self.auth = auth
        self.base_url = base_url
        self.key = load_private_key(auth.private_key_file, auth.algorithm)
        self.clock = clock
        self.http: FhirHttp | None = None  # set by the caller: the token endpoint shares the retries
        self._token: str | None = None
        self._expires_at = 0.0
        self._token_url = auth.token_url
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def headers(self) -> dict[str, str]:
        async with self._lock:
            if self._token is None or self.clock() >= self._expires_at - self.auth.refresh_margin_s:
                await self._fetch()
            return {"Authorization": f"Bearer {self._token}"}

    def invalidate(self) -> None:
        self._token = None

    async def token_url(self) -> str:
        if self._token_url is None:
            assert self.http is not None
            url = f"{self.base_url}/.well-known/smart-configuration"
            response = await self.http.request(
                "GET", url, "SMART discovery", headers={"Accept": "application/json"}, authenticated=False
            )
            try:
                endpoint = response.json()["token_endpoint"] if response.status_code == 200 else None
            except (ValueError, KeyError, TypeError, RecursionError):
                endpoint = None
            if not isinstance(endpoint, str):
                raise FhirSourceError(
                    f"source {self.http.source}: no token_endpoint in .well-known/smart-configuration"
                )
            self._token_url = endpoint
        return self._token_url

    async def _fetch(self) -> None:
        assert self.http is not None
        url = await self.token_url()
        form = {
            "grant_type": "client_credentials",
            "scope": self.auth.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(self.auth, self.key, url, self.clock()),
        }
        response = await self.http.request(
            "POST",
            url,
            "SMART token request",
            data=form,
            headers={"Accept": "application/json"},
            authenticated=False,
        )
        try:
            doc = response.json() if response.status_code == 200 else {}
            token, lifetime = doc["access_token"], float(doc.get("expires_in", 300))
        except (ValueError, KeyError, TypeError, RecursionError):
            raise FhirSourceError(
                f"source {self.http.source}: the token endpoint answered HTTP {response.status_code} "
                "without an access token"
            ) from None
        self._token = str(token)
        self._expires_at = self.clock() + lifetime
        self.fetches += 1


def token_source(source: SourceConfig) -> TokenSource:
    auth = source.auth
    if isinstance(auth, StaticTokenAuth):
        return StaticTokens(auth)
    if isinstance(auth, SmartAuth):
        return SmartTokens(auth, source.base)
    assert isinstance(auth, NoAuth)
    return TokenSource()
