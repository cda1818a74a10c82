"""Fetching the resources an ``id-only`` notification names, from the server that notified.

Only a FHIR read (``<type>/<id>``) or vread (``…/_history/<vid>``) under the notifier's configured base
URL is fetched, with the notifier's configured credentials: a notification cannot make the hub request
an arbitrary URL, nor send its token there. "Under" is decided on the normalised URL, never on the
string the notification carries: same scheme, host and port as the base (compared exactly, user info
refused), then the path with its dot segments removed as the server itself would (RFC 3986 §5.2.4,
``.``/``..`` recognised in any percent-encoded form, ``%2e%2E`` included), and percent-encoded
slashes, backslashes or control characters refused outright (servers disagree on decoding them). The
hub then requests the normalised URL, so the server never sees a dot segment.

What a notifier may cost is bounded too: the number of references per notification (the server shell)
and the bytes of each fetched resource, read in chunks and abandoned at the cap.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp

from affluent.core.origins import origin_of
from affluent.core.settings import FhirNotifierSettings
from connectors.fhir_rest.intake import Refusal
from formats.fhir.common import FHIR_JSON, Issue

CONCURRENCY: Final = 8  # GETs in flight to one notifier for one notification
_CHUNK: Final = 64 * 1024
# A read or a vread, as the FHIR RESTful API names them: resource type, id, optional version.
_READ: Final = re.compile(
    r"[A-Z][A-Za-z]{0,63}/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?", re.ASCII
)
_UNSAFE: Final = re.compile(r"[/\\\x00-\x1f\x7f]")


class FetchFailed(Exception):
    """The notifying server did not give the resource; the notification is answered 503, to be retried."""


def _outside() -> Refusal:
    return Refusal(422, Issue("security", "a notification names a resource outside its server"))


def _decoded(segment: str) -> str:
    """Percent-decoding until nothing changes: ``%252e`` is as much a dot to a lenient server."""
    for _ in range(4):
        once = unquote(segment)
        if once == segment:
            return once
        segment = once
    raise _outside()


def remove_dot_segments(path: str) -> list[str]:
    """The path's segments with ``.`` and ``..`` (in any encoding) applied, RFC 3986 §5.2.4."""
    out: list[str] = []
    for segment in path.split("/")[1:]:
        plain = _decoded(segment)
        if plain == ".":
            continue
        if plain == "..":
            if out:
                out.pop()
            continue
        if _UNSAFE.search(plain):
            raise _outside()
        out.append(segment)
    return out


def resolve(reference: str, notifier: FhirNotifierSettings) -> str:
    """The URL to GET for one id-only reference, or :class:`Refusal` (422) naming no part of it."""
    base = notifier.base_url.rstrip("/")
    if reference.startswith(("urn:", "#")) or not reference.strip():
        raise Refusal(422, Issue("invalid", "an id-only notification entry has no resolvable reference"))
    # Absolute as given (scheme-relative: no origin, refused below); relative under the base.
    absolute = "://" in reference or reference.startswith(("/", "\\"))
    url = reference if absolute else f"{base}/{reference}"
    origin = origin_of(url)
    if origin is None or origin != origin_of(base):
        raise _outside()
    parts = urlsplit(url)
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise Refusal(422, Issue("invalid", "an id-only reference is a read, without query or fragment"))
    segments = remove_dot_segments(parts.path)
    prefix = [_decoded(s) for s in remove_dot_segments(urlsplit(base).path) if s]
    if [_decoded(s) for s in segments[: len(prefix)]] != prefix:
        raise _outside()
    tail = "/".join(_decoded(s) for s in segments[len(prefix) :])
    if not _READ.fullmatch(tail):
        raise Refusal(422, Issue("invalid", "an id-only reference must name <type>/<id>[/_history/<vid>]"))
    return urlunsplit((parts.scheme, parts.netloc, "/" + "/".join(segments), "", ""))


async def fetch(
    session: aiohttp.ClientSession,
    url: str,
    notifier: FhirNotifierSettings,
    max_bytes: int | None = None,
) -> bytes:
    headers = {"Accept": FHIR_JSON}
    if notifier.bearer_token is not None:
        headers["Authorization"] = f"Bearer {notifier.bearer_token.get_secret_value()}"
    try:
        async with session.get(
            url,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=notifier.timeout_s),
            allow_redirects=False,
        ) as response:
            if response.status != 200:
                raise FetchFailed(f"the notifying server answered {response.status}")
            if max_bytes is None:
                return await response.read()
            body = bytearray()
            async for chunk in response.content.iter_chunked(_CHUNK):
                body += chunk
                if len(body) > max_bytes:  # decompressed bytes: a gzip bomb stops here too
                    raise Refusal(422, Issue("too-costly", f"a notified resource exceeds {max_bytes} bytes"))
            return bytes(body)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise FetchFailed(f"the notifying server could not be read ({type(exc).__name__})") from None
