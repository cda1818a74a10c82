"""Fetching the resources an ``id-only`` notification names, from the server that notified.

Only a reference under the notifier's configured base URL is fetched, with the notifier's configured
credentials: a notification cannot make the hub request an arbitrary URL (or send its token there).
"""

from __future__ import annotations

import aiohttp

from affluent.core.settings import FhirNotifierSettings
from connectors.fhir_rest.intake import Refusal
from formats.fhir.common import FHIR_JSON, Issue


class FetchFailed(Exception):
    """The notifying server did not give the resource; the notification is answered 503, to be retried."""


def resolve(reference: str, notifier: FhirNotifierSettings) -> str:
    base = notifier.base_url.rstrip("/")
    if reference.startswith(("http://", "https://")):
        if not reference.startswith(base + "/"):
            raise Refusal(422, Issue("security", "a notification names a resource outside its server"))
        return reference
    if reference.startswith(("urn:", "#", "/")) or ".." in reference:
        raise Refusal(422, Issue("invalid", "an id-only notification entry has no resolvable reference"))
    return f"{base}/{reference}"


async def fetch(session: aiohttp.ClientSession, url: str, notifier: FhirNotifierSettings) -> bytes:
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
            return await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise FetchFailed(f"the notifying server could not be read ({type(exc).__name__})") from None
