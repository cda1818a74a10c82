"""What the FHIR REST door does with a request body, decided without I/O: store what, answer what.

A request becomes a :class:`Plan`: the raw records to store (:class:`Item`) and, for a batch, the
entries refused on their own. The HTTP shell only authenticates, reads the body, commits the items and
writes the answer this module prepared. How Bundles are stored follows what the normalize stage maps
(``streams/normalize/fhir/``):

* a single resource, a ``transaction`` and a ``collection`` are stored as **one raw record** with their
  bytes untouched — a transaction is all or nothing, so one invalid entry refuses the whole Bundle;
* a ``batch`` is stored **entry by entry** (its entries are independent): each valid resource becomes
  its own record (re-serialised JSON), each invalid one gets its own 4xx in the response Bundle, and a
  DELETE travels as a one-entry batch Bundle, which the mapper turns into a retraction.

Validation is the mapper's own, called with the same inputs (``formats/fhir``): the R4 check
(fhir.resources' R4B models) and the mapper's own rules (``admission.py``: patient linkage, codes,
required bindings, times, DELETE urls — with the Bundle as context for a transaction or collection,
alone for a batch entry, which is stored alone). So what the door answers 2xx the normalize stage maps
(issue #18). Status codes: the refusal's ReasonCode decides (formats/reasons.py: 400 for a broken R4
rule, 422 for a rule of this hub); a request well-formed but not acceptable here (id mismatch, Bundle
type, PATCH, a read in a transaction) → 422; a read in a batch → 405 for that entry alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from formats.fhir.admission import MAPPED_TYPES as MAPPED_TYPES
from formats.fhir.admission import (
    check_bundle,
    check_entry_resources,
    check_mappable,
    delete_target,
    scope_of,
    walk_bundle,
)
from formats.fhir.common import Issue, content_digest, resource_message_id, version_id
from formats.fhir.validate import parse_json, validate_bundle_shell, validate_resource
from formats.reasons import ReasonCode, Refused

# Resource types the door takes at /fhir/{type}: what the normalize stage maps, plus Bundle.
RESOURCE_TYPES: Final = MAPPED_TYPES | {"Bundle"}
ROOT_BUNDLE_TYPES: Final = frozenset({"batch", "transaction", "collection"})
_STATUS_TEXT: Final = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}
_READS: Final = ("GET", "HEAD")


class Refusal(Exception):
    """A request (or one batch entry) refused with an HTTP status and a content-free OperationOutcome."""

    def __init__(self, status: int, *issues: Issue) -> None:
        super().__init__(issues[0].diagnostics if issues else str(status))
        self.status = status
        self.issues = issues

    def __reduce__(self) -> tuple[Any, ...]:
        """Picklable with its status and issues: Bundles may be planned in a validation process."""
        return (type(self), (self.status, *self.issues))


@dataclass(frozen=True, slots=True)
class Item:
    """One raw record to store, and where the stored thing can be named afterwards."""

    payload: bytes
    message_type: str
    message_id: str | None
    status: int  # the answer once stored: 201 created, 200 updated/processed, 204 deleted
    location: str | None = None  # relative: <type>/<id>[/_history/<vid>]
    version: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    if_none_exist: str | None = None  # a batch entry's request.ifNoneExist (the header's twin)

    @property
    def effective_message_id(self) -> str:
        return self.message_id or content_digest(self.payload)


@dataclass(frozen=True, slots=True)
class Entry:
    """A batch or transaction entry's fate: stored as (part of) an item, or refused on its own."""

    index: int
    status: int
    location: str | None = None
    version: str | None = None
    item: Item | None = None  # batch entries carry their own record
    refusal: Refusal | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    kind: str  # resource | batch | transaction | collection
    items: list[Item]
    entries: list[Entry] = field(default_factory=list)


def _invalid(exc: Refused) -> Refusal:
    """The answer its reason code gives (formats/reasons.py): the same words as the dead letter's."""
    return Refusal(exc.code.http_status, Issue(exc.code.fhir_issue, exc.reason, exc.location or None))


def parse(body: bytes) -> dict[str, Any]:
    try:
        data = parse_json(body)
    except Refused as exc:
        raise _invalid(exc) from None
    if not isinstance(data, dict):
        raise Refusal(400, Issue("structure", "the body is not a JSON object", "resourceType"))
    rtype = data.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise Refusal(400, Issue("structure", "the body has no resourceType", "resourceType"))
    return data


def _validate(resource: dict[str, Any], rtype: str, where: str = "") -> int:
    """The R4 check, then the mapper's rules; how many events the payload yields."""
    try:
        if rtype == "Bundle":
            return _validate_bundle(resource)
        validate_resource(resource, rtype, where)
        check_mappable(resource, rtype, where)
        return 1
    except Refused as exc:
        raise _invalid(exc) from None


def _validate_bundle(bundle: dict[str, Any]) -> int:
    """Stored as one record, mapped as one payload: its entries are checked in its context (a subject
    may be a Patient entry, a urn:uuid fullUrl, a contained resource), as the mapper will read them."""
    check_entry_resources(bundle)
    validate_bundle_shell(bundle)
    for index, entry in enumerate(_entries(bundle)):
        resource = entry.get("resource")
        if isinstance(resource, dict):
            validate_resource(resource, resource["resourceType"], f"Bundle.entry[{index}]: ")
    walk = walk_bundle(bundle)
    return check_bundle(walk, scope_of(walk.resources), name_entries=True)


def _nothing_to_map(events: int) -> None:
    """Stored, such a Bundle would only become a ``nothing_to_map`` dead letter."""
    if not events:
        exc = Refused(
            ReasonCode.NOTHING_TO_MAP,
            "the Bundle holds no entry this hub maps (no resource of a mapped type, no DELETE of one)",
            "Bundle.entry",
        )
        raise _invalid(exc)


def _entries(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    entries = bundle.get("entry")
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def _location(rtype: str, rid: str | None, vid: str | None) -> str | None:
    if not rid:
        return None
    return f"{rtype}/{rid}/_history/{vid}" if vid else f"{rtype}/{rid}"


def resource_item(body: bytes, url_type: str, url_id: str | None = None) -> Item:
    """``POST /fhir/{type}`` (url_id None) or ``PUT /fhir/{type}/{id}``: the body stored untouched."""
    if url_type not in RESOURCE_TYPES:
        raise Refusal(404, Issue("not-supported", "this resource type is not accepted here", "resourceType"))
    resource = parse(body)
    if resource["resourceType"] != url_type:
        raise Refusal(400, Issue("invalid", "resourceType differs from the type in the URL", "resourceType"))
    rid = resource.get("id")
    if url_id is not None and rid != url_id:
        raise Refusal(
            422, Issue("invalid", "the resource id differs from the id in the URL", f"{url_type}.id")
        )
    events = _validate(resource, url_type)
    vid = version_id(resource)
    message_type = url_type
    if url_type == "Bundle":
        _nothing_to_map(events)
        message_type = f"Bundle/{resource.get('type')}" if isinstance(resource.get("type"), str) else "Bundle"
    return Item(
        payload=body,
        message_type=message_type,
        message_id=resource_message_id(resource),
        status=200 if url_id is not None else 201,
        location=_location(url_type, rid if isinstance(rid, str) else None, vid),
        version=vid,
    )


def bundle_plan(body: bytes) -> Plan:
    """``POST /fhir``: a batch, transaction or collection Bundle."""
    bundle = parse(body)
    if bundle["resourceType"] != "Bundle":
        raise Refusal(422, Issue("invalid", "only a Bundle can be posted to the base URL", "resourceType"))
    btype = bundle.get("type")
    if not isinstance(btype, str) or btype not in ROOT_BUNDLE_TYPES:  # a list or object is not hashable
        raise Refusal(
            422, Issue("not-supported", "Bundle.type must be batch, transaction or collection", "Bundle.type")
        )
    if btype == "batch":
        try:
            validate_bundle_shell(bundle)
        except Refused as exc:
            raise _invalid(exc) from None
        entries = [_batch_entry(i, e) for i, e in enumerate(_entries(bundle))]
        return Plan("batch", [e.item for e in entries if e.item is not None], entries)
    events = _validate(bundle, "Bundle")
    entries = (
        [_transaction_entry(i, e) for i, e in enumerate(_entries(bundle))] if btype == "transaction" else []
    )
    _nothing_to_map(events)
    whole = Item(
        payload=body,
        message_type=f"Bundle/{btype}",
        message_id=resource_message_id(bundle),
        status=200,
        location=_location("Bundle", bundle.get("id") if isinstance(bundle.get("id"), str) else None, None),
        version=version_id(bundle),
    )
    return Plan(str(btype), [whole], entries)


def _method(entry: Mapping[str, Any], index: int) -> str:
    request = entry.get("request")
    method = request.get("method") if isinstance(request, dict) else None
    if not isinstance(method, str):
        raise Refusal(
            400, Issue("required", "entry.request.method is required", f"Bundle.entry[{index}].request")
        )
    return method


def _transaction_entry(index: int, entry: Mapping[str, Any]) -> Entry:
    method = _method(entry, index)
    where = f"Bundle.entry[{index}].request.method"
    if method in _READS:
        raise Refusal(
            422,
            Issue(
                "not-supported",
                "a transaction cannot hold GET or HEAD entries: the hub keeps no readable copy to answer "
                "them and a transaction is all or nothing; read from your own server, or send a batch",
                where,
            ),
        )
    if method not in ("POST", "PUT", "DELETE"):
        raise Refusal(422, Issue("not-supported", "only POST, PUT and DELETE entries are accepted", where))
    resource = entry.get("resource")
    if method == "DELETE":
        return Entry(index, 204)
    if not isinstance(resource, dict):
        raise Refusal(
            400, Issue("required", "POST and PUT entries need a resource", f"Bundle.entry[{index}]")
        )
    rid, vid = resource.get("id"), version_id(resource)
    location = _location(resource["resourceType"], rid if isinstance(rid, str) else None, vid)
    return Entry(index, 201 if method == "POST" else 200, location, vid)


def _batch_entry(index: int, entry: Mapping[str, Any]) -> Entry:
    try:
        method = _method(entry, index)
        if method == "DELETE":
            item = _delete_item(index, entry)
            return Entry(index, item.status, item=item)
        if method in _READS:
            raise Refusal(
                405,
                Issue(
                    "not-supported",
                    "GET and HEAD entries are not answered: the hub keeps no readable copy; read from "
                    "your own server (the batch's other entries are processed)",
                    f"Bundle.entry[{index}].request.method",
                ),
            )
        if method not in ("POST", "PUT"):
            raise Refusal(
                422,
                Issue(
                    "not-supported",
                    "only POST, PUT and DELETE entries are accepted",
                    f"Bundle.entry[{index}]",
                ),
            )
        resource = entry.get("resource")
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise Refusal(
                400, Issue("required", "POST and PUT entries need a resource", f"Bundle.entry[{index}]")
            )
        rtype = resource["resourceType"]
        if rtype not in MAPPED_TYPES:
            raise Refusal(
                404,
                Issue("not-supported", "this resource type is not accepted here", f"Bundle.entry[{index}]"),
            )
        _validate(resource, rtype, f"Bundle.entry[{index}]: ")
        rid, vid = resource.get("id"), version_id(resource)
        item = Item(
            payload=json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
            message_type=rtype,
            message_id=resource_message_id(resource),
            status=201 if method == "POST" else 200,
            location=_location(rtype, rid if isinstance(rid, str) else None, vid),
            version=vid,
            attributes={"bundle_type": "batch", "bundle_entry": str(index)},
            if_none_exist=_if_none_exist(entry) if method == "POST" else None,
        )
        return Entry(index, item.status, item.location, vid, item=item)
    except Refusal as refusal:
        return Entry(index, refusal.status, refusal=refusal)


def _if_none_exist(entry: Mapping[str, Any]) -> str | None:
    request = entry.get("request")
    query = request.get("ifNoneExist") if isinstance(request, dict) else None
    return query if isinstance(query, str) and query.strip() else None


def delete_item(url_type: str, url_id: str, if_match: str | None) -> Item:
    """``DELETE /fhir/{type}/{id}``: stored as the one-entry batch a client could have sent instead."""
    if url_type not in MAPPED_TYPES:
        raise Refusal(404, Issue("not-supported", "this resource type is not accepted here", "resourceType"))
    request = {"method": "DELETE", "url": f"{url_type}/{url_id}"}
    try:
        delete_target({"request": request}, 0)
    except Refused as exc:
        raise Refusal(
            exc.code.http_status,
            Issue(exc.code.fhir_issue, "the id in the URL is not a FHIR id", f"{url_type}.id"),
        ) from None
    if if_match:
        request["ifMatch"] = if_match
    item = _delete_item(0, {"request": request})
    return replace(item, message_id=f"{item.message_id} {if_match or ''}".rstrip(), attributes={})


def _delete_item(index: int, entry: Mapping[str, Any]) -> Item:
    request = entry.get("request")
    url = request.get("url") if isinstance(request, dict) else None
    if not isinstance(url, str) or not url:
        raise Refusal(
            400, Issue("required", "a DELETE entry needs request.url", f"Bundle.entry[{index}].request")
        )
    try:  # stored as a one-entry batch, mapped as the retraction of what the url names
        rtype = delete_target(entry, index)[0]
    except Refused as exc:
        raise _invalid(exc) from None
    if rtype not in MAPPED_TYPES:  # nothing was ever stored for it: the retraction would name nothing
        raise Refusal(
            404,
            Issue(
                "not-supported",
                "this resource type is not accepted here",
                f"Bundle.entry[{index}].request.url",
            ),
        )
    one = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": dict(request or {})}]}
    return Item(
        payload=json.dumps(one, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
        message_type="Bundle/batch",
        message_id=f"DELETE {url}",
        status=204,
        attributes={"bundle_type": "batch", "bundle_entry": str(index)},
    )


def status_text(status: int) -> str:
    return _STATUS_TEXT.get(status, str(status))
