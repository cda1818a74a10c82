"""Talking to a source politely: bounded retries with jittered back-off that honour Retry-After.

429, 500, 502, 503, 504 and transport errors are retried; a 401 makes the token source fetch a fresh
token once; anything else is an answer. Past ``max_attempts`` the call raises
:class:`affluent.core.errors.FhirSourceError` naming the source and what was asked, never the payload.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from affluent.core.errors import FhirSourceError
from affluent.core.origins import Origin, origin_of, transport_allowed

RETRYABLE = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP-date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff_s(attempt: int, retry_after: float | None, policy: RetryPolicy, rng: random.Random) -> float:
    """Wait before retry number ``attempt`` (1-based).

    The server's Retry-After is a floor (plus a little jitter so that many pullers do not return in
    step); without it, full jitter over an exponential ceiling. Never more than ``max_delay_s``.
    """
    if retry_after is not None:
        return min(policy.max_delay_s, retry_after + rng.uniform(0, policy.base_delay_s))
    ceiling = min(policy.max_delay_s, policy.base_delay_s * 2 ** (attempt - 1))
    return rng.uniform(0, ceiling)


class TokenSource:
    """What an auth scheme offers to the HTTP layer; the default sends no Authorization header."""

    async def headers(self) -> dict[str, str]:
        return {}

    def invalidate(self) -> None:
        """Called after a 401: the next ``headers`` must not reuse the refused token."""


@dataclass
class FhirHttp:
    """One source's HTTP client: retries, back-off and token refresh in one place.

    With ``origin`` (the source's base URL's; :func:`connectors.fhir_poll.puller.open_puller` always
    sets it) the client is pinned: a request that would carry the token goes to that origin only,
    whatever URL a server handed back, and no request goes in plain http unless ``allow_plaintext``
    (or to loopback).
    """

    client: httpx.AsyncClient
    source: str
    tokens: TokenSource
    policy: RetryPolicy = RetryPolicy()
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    origin: Origin | None = None
    allow_plaintext: bool = False

    def pin(self, url: str, what: str) -> None:
        """Refuse a server-supplied URL (next link, status URL, file) that leaves the source's origin."""
        if self.origin is not None and origin_of(url) != self.origin:
            raise FhirSourceError(
                f"source {self.source}: {what} points outside the source's origin {self.origin}; not followed"
            )

    def check_transport(self, url: str, what: str) -> None:
        if self.origin is not None and not transport_allowed(url, self.allow_plaintext):
            raise FhirSourceError(f"source {self.source}: {what} is not an https URL; not requested")

    async def request(
        self,
        method: str,
        url: str,
        what: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        authenticated: bool = True,
        data: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """The first non-retryable answer (any status but 401 and the retryable ones), or FhirSourceError.

        With ``stream`` the body is left unread (large NDJSON files): the caller must close the response.
        """
        self.check_transport(url, what)
        if authenticated:  # the token goes to the source's own origin, never where a server points
            self.pin(url, what)
        refreshed = False
        last = "no answer"
        attempt = 0
        while True:
            attempt += 1
            sent = dict(headers or {})
            if authenticated:
                sent.update(await self.tokens.headers())
            try:
                request = self.client.build_request(method, url, params=params, headers=sent, data=data)
                response = await self.client.send(request, stream=stream)
            except httpx.TransportError as exc:
                last = type(exc).__name__
                retry_after = None
            else:
                if response.status_code in RETRYABLE or response.status_code == 401:
                    await response.aclose()
                if response.status_code == 401 and authenticated and not refreshed:
                    refreshed = True
                    self.tokens.invalidate()
                    attempt -= 1  # a refresh is not a failure of the source
                    continue
                if response.status_code not in RETRYABLE:
                    if response.status_code == 401:
                        raise FhirSourceError(f"source {self.source}: {what} refused the fresh token (401)")
                    return response
                last = f"HTTP {response.status_code}"
                retry_after = retry_after_s(response.headers.get("Retry-After"))
            if attempt >= self.policy.max_attempts:
                raise FhirSourceError(
                    f"source {self.source}: {what} failed after {attempt} attempts (last: {last})"
                )
            await self.sleep(backoff_s(attempt, retry_after, self.policy, self.rng))

    async def get(self, url: str, what: str, params: Mapping[str, str] | None = None) -> httpx.Response:
        response = await self.request(
            "GET", url, what, params=params, headers={"Accept": "application/fhir+json"}
        )
        expect_ok(response, self.source, what)
        return response


def expect_ok(response: httpx.Response, source: str, what: str) -> None:
    if response.status_code != 200:
        raise FhirSourceError(f"source {source}: {what} answered HTTP {response.status_code}")
