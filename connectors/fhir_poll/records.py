"""Pure rules of the puller: resource → raw record, search parameters, Bundle paging.

The raw record's ``message_id`` is ``<type>/<id>/_history/<versionId or lastUpdated>``: the same
version of a resource pulled twice (a resumed page, an overlapping ``_lastUpdated`` window, a bulk
export after a search) gets the same ``raw_id`` and collapses downstream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from connectors.fhir_poll.config import SourceConfig
from connectors.raw import RawMessage

FHIR_JSON = "application/fhir+json"

Resource = dict[str, Any]
# (meta.lastUpdated, version key): all a checkpoint needs to know of a stored resource.
Mark = tuple[str, str]


class BadResource(ValueError):
    """A resource the puller cannot identify (no type, id or version marker); content-free text."""


@dataclass(frozen=True, slots=True)
class Pulled:
    """One resource as pulled: its raw record and the ``meta.lastUpdated`` that orders it."""

    message: RawMessage
    last_updated: str
    version_key: str  # message_id, the key for boundary de-duplication

    @property
    def mark(self) -> Mark:
        return (self.last_updated, self.version_key)


def version_key(resource: Mapping[str, Any]) -> tuple[str, str]:
    """``(<type>/<id>/_history/<versionId or lastUpdated>, lastUpdated)`` of one resource."""
    rtype = resource.get("resourceType")
    rid = resource.get("id")
    meta = resource.get("meta")
    meta = meta if isinstance(meta, Mapping) else {}
    version = meta.get("versionId")
    last_updated = meta.get("lastUpdated")
    if not isinstance(rtype, str) or not rtype or not isinstance(rid, str) or not rid:
        raise BadResource("resource without resourceType or id")
    if not isinstance(last_updated, str) or not last_updated:
        last_updated = ""
    marker = version if isinstance(version, str) and version else last_updated
    if not marker:
        raise BadResource(f"{rtype} without meta.versionId or meta.lastUpdated")
    return f"{rtype}/{rid}/_history/{marker}", last_updated


def pulled(resource: Resource, source: SourceConfig, mode: str, payload: bytes | None = None) -> Pulled:
    """The raw record of one pulled resource; ``payload`` is the resource's bytes when already at hand
    (an NDJSON line), otherwise the resource is serialised compactly, as the server sent it."""
    key, last_updated = version_key(resource)
    body = payload if payload is not None else json.dumps(resource, ensure_ascii=False).encode("utf-8")
    message = RawMessage(
        protocol="fhir",
        connector="fhir_poll",
        facility=source.facility,
        application=source.application,
        payload=body,
        content_type=FHIR_JSON,
        message_id=key,
        message_type=str(resource["resourceType"]),
        peer=source.name,
        attributes={"source": source.name, "mode": mode},
    )
    return Pulled(message, last_updated, key)


@dataclass(frozen=True, slots=True)
class Unusable:
    """A resource the puller cannot store as a raw record: it goes to ``dlq.ingest`` with this reason."""

    payload: bytes
    reason: str


def sort_out(
    resources: Iterator[tuple[Resource | None, bytes | None, str]], source: SourceConfig, mode: str
) -> tuple[list[Pulled], list[Unusable]]:
    """Split one page (or NDJSON batch) into storable records and dead letters, keeping order."""
    good: list[Pulled] = []
    bad: list[Unusable] = []
    for resource, payload, problem in resources:
        if resource is None:
            bad.append(Unusable(payload or b"", problem))
            continue
        try:
            good.append(pulled(resource, source, mode, payload))
        except BadResource as exc:
            raw = payload if payload is not None else json.dumps(resource, ensure_ascii=False).encode()
            bad.append(Unusable(raw, str(exc)))
        except RecursionError:  # nested too deep to serialise again: the bytes are what we hold
            bad.append(Unusable(payload or b"", "resource nested too deeply"))
    return good, bad


def search_params(source: SourceConfig, since: str | None) -> dict[str, str]:
    """First-page parameters of one type's incremental search.

    ``ge`` rather than ``gt``: resources sharing the checkpoint's timestamp may sit on both sides of a
    page break, and a resumed search must see the ones it had not stored yet; those it had are
    recognised by :class:`connectors.fhir_poll.checkpoint.Checkpoint` and skipped.
    """
    params = dict(source.extra_params)
    params["_sort"] = "_lastUpdated"
    params["_count"] = str(source.page_size)
    if since:
        params["_lastUpdated"] = f"ge{since}"
    return params


def next_link(bundle: Mapping[str, Any]) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, Mapping) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return str(link["url"])
    return None


def bundle_resources(bundle: Mapping[str, Any], rtype: str) -> Iterator[Resource]:
    """The matches of a searchset page (``search.mode`` match or absent); included resources are not
    this type's sync and are skipped, OperationOutcomes too."""
    if bundle.get("resourceType") != "Bundle":
        raise BadResource("search answer is not a Bundle")
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        search = entry.get("search")
        mode = search.get("mode") if isinstance(search, Mapping) else None
        resource = entry.get("resource")
        if mode not in (None, "match") or not isinstance(resource, dict):
            continue
        if resource.get("resourceType") != rtype:
            continue
        yield resource


def ndjson_line(number: int, line: bytes) -> tuple[Resource | None, bytes, str] | None:
    """One line of a Bulk Data NDJSON file: ``(resource, its bytes, "")``, ``(None, bytes, reason)`` for
    a line that is not a JSON object (a dead letter, not a stop), or None for a blank line."""
    line = line.strip()
    if not line:
        return None
    try:
        resource = json.loads(line)
    except (ValueError, RecursionError):
        return None, line, f"NDJSON line {number} is not JSON"
    if not isinstance(resource, dict):
        return None, line, f"NDJSON line {number} is not a resource"
    return resource, line, ""


def ndjson_lines(body: bytes) -> Iterator[tuple[Resource | None, bytes, str]]:
    for number, line in enumerate(body.split(b"\n"), start=1):
        parsed = ndjson_line(number, line)
        if parsed is not None:
            yield parsed
