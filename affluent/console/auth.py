"""Who is at the console, and whether a form was posted from the console's own page.

A browser cannot put a bearer header on a link it follows, so besides ``Authorization: Bearer`` and a
client certificate the console takes the token once, in a login form, and answers with a session
cookie: a random id kept in this process's memory (a restart logs everybody out), signed with a secret
drawn at start, HttpOnly, SameSite=Strict, Secure over TLS, for a bounded time.

A cookie and a client certificate are *ambient* credentials: the browser presents them with any
request, also one a hostile page makes it send. So every form that acts carries a CSRF token,
HMAC(process secret, credential), which that page can neither read (same-origin policy) nor compute.
A bearer header is not ambient, but its forms carry the token too: one rule, no exception to reason about.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from affluent.core.auth import StaticTokens
from affluent.core.tls import subject_cn

MAX_SESSIONS = 1000  # only a valid token opens one; the oldest goes first past this many


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: ``who`` goes to the audit trail, ``credential`` binds the CSRF token."""

    who: str
    credential: str
    how: str  # "certificate", "bearer" or "session"


class Sessions:
    """Browser sessions and CSRF tokens, keyed by one random secret of this process."""

    def __init__(
        self,
        lifetime_s: float,
        clock: Callable[[], float] = time.monotonic,
        secret: bytes | None = None,
        limit: int = MAX_SESSIONS,
    ) -> None:
        self.lifetime_s = lifetime_s
        self._clock = clock
        self._secret = secret or secrets.token_bytes(32)
        self._limit = limit
        self._open: OrderedDict[str, tuple[str, float]] = OrderedDict()  # id → (who, expiry)

    def _sign(self, purpose: str, value: str) -> str:
        return hmac.new(self._secret, f"{purpose}\0{value}".encode(), hashlib.sha256).hexdigest()

    def open(self, who: str) -> str:
        """A new session for ``who``; returns the cookie's value."""
        sid = secrets.token_urlsafe(24)
        self._open[sid] = (who, self._clock() + self.lifetime_s)
        while len(self._open) > self._limit:
            self._open.popitem(last=False)
        return f"{sid}.{self._sign('session', sid)}"

    def _sid(self, cookie: str | None) -> str | None:
        if not cookie or cookie.count(".") != 1:
            return None
        sid, signature = cookie.split(".")
        return sid if hmac.compare_digest(signature, self._sign("session", sid)) else None

    def caller(self, cookie: str | None) -> Caller | None:
        sid = self._sid(cookie)
        found = self._open.get(sid) if sid is not None else None
        if sid is None or found is None:
            return None
        who, expires = found
        if self._clock() >= expires:
            del self._open[sid]
            return None
        return Caller(who, f"session:{sid}", "session")

    def close(self, cookie: str | None) -> None:
        sid = self._sid(cookie)
        if sid is not None:
            self._open.pop(sid, None)

    def csrf(self, caller: Caller) -> str:
        return self._sign("csrf", caller.credential)

    def csrf_ok(self, caller: Caller, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(str(presented), self.csrf(caller))


def identify(
    tokens: StaticTokens | None,
    subjects: Sequence[str],
    sessions: Sessions,
    authorization: str | None,
    peercert: Mapping[str, Any] | None,
    cookie: str | None,
) -> Caller | None:
    """The caller of a request: a client certificate whose one CN is allowed, else a bearer token, else
    a session cookie; None when none of them names anybody."""
    cn = subject_cn(peercert)
    if cn is not None and cn in subjects:
        return Caller(cn, f"certificate:{cn}", "certificate")
    if tokens is not None and authorization:
        principal = tokens.principal(authorization)
        if principal is not None:
            digest = hashlib.sha256(authorization.partition(" ")[2].strip().encode()).hexdigest()
            return Caller(principal, f"bearer:{digest}", "bearer")
    return sessions.caller(cookie)
