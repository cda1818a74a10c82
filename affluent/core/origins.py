"""Origins (scheme, host, port) of the URLs the hub calls, and where plain HTTP is tolerated.

A URL handed to the hub by a remote party (a notification's reference, a search's ``next`` link, a Bulk
export's status or file URL) is trusted only when its origin *is* the configured server's: a string
prefix test is defeated by ``https://eds.example.evil.net``, ``https://eds.example@evil.net`` or an
explicit other port, and a bearer token must never travel to such a host.

Plain ``http://`` would send tokens and patient data in clear: it is refused unless the configuration
says so explicitly, or the host is a loopback address, which never leaves the machine (W3C Secure
Contexts counts ``127.0.0.0/8``, ``::1`` and ``localhost`` as potentially trustworthy for the same
reason; it is also how the local stack and the tests run). Loopback is decided where every door decides
it, :func:`affluent.core.tls.is_loopback`.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from affluent.core.tls import is_loopback

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def origin_of(url: str) -> Origin | None:
    """The origin of an absolute http(s) URL; None for anything else, and for URLs with user info
    (``https://trusted@evil``), whose host is easy to misread."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        return None
    return Origin(scheme, parts.hostname.lower().rstrip("."), port or _DEFAULT_PORTS[scheme])


def transport_allowed(url: str, allow_plaintext: bool = False) -> bool:
    """Whether the hub may call ``url``: https, or http to a loopback host or when explicitly allowed."""
    origin = origin_of(url)
    if origin is None:
        return False
    return origin.scheme == "https" or allow_plaintext or is_loopback(origin.host)
