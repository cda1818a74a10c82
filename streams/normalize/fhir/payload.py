"""The entry point :func:`map_fhir`: one raw payload (a lone resource or a Bundle) → canonical events.

Apart from the mappers because this is where the payload as a whole is judged — parsed, validated
(Bundle shell, then each entry), notification status entries, reads and OperationOutcomes skipped,
PATCH refused — and each mapped entry is dispatched to its resource type's mapper or to a retraction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from fhir.resources.R4B import get_fhir_model_class

from formats.clinical.codes import Record
from formats.fhir.validate import parse_json, validate_bundle_shell, validate_resource
from formats.reasons import ReasonCode
from streams.normalize.envelope import RawContext
from streams.normalize.fhir.administrative import _map_encounter, _map_patient
from streams.normalize.fhir.clinical import (
    _map_condition,
    _map_diagnostic_report,
    _map_observation,
    _map_procedure,
)
from streams.normalize.fhir.deletes import _retraction
from streams.normalize.fhir.document import _Doc
from streams.normalize.fhir.entry import _Entry
from streams.normalize.fhir.read import _dict, _etag_version, _str
from streams.normalize.fhir.vocabulary import MAPPED_TYPES, NOTIFICATION_STATUS_TYPES, SUPPORTING_TYPES
from streams.normalize.options import MappingOptions
from streams.normalize.result import CanonicalEvent, MappingError

_MAPPERS: Final[Mapping[str, Callable[[_Doc, _Entry], CanonicalEvent]]] = {
    "Patient": _map_patient,
    "Encounter": _map_encounter,
    "Observation": _map_observation,
    "Condition": _map_condition,
    "Procedure": _map_procedure,
    "DiagnosticReport": _map_diagnostic_report,
}


def _known_type(rtype: str) -> str:
    """The type's name only when FHIR defines it: an arbitrary resourceType string is input text."""
    try:
        get_fhir_model_class(rtype)
    except (ValueError, AttributeError, TypeError):
        return "the payload's resourceType"
    return rtype


def _resource_type(resource: Any, location: str) -> str:
    if not isinstance(resource, dict):
        raise MappingError(
            ReasonCode.INVALID_RESOURCE, f"{location} is not a JSON object", location, "FHIR JSON resource"
        )
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise MappingError(
            ReasonCode.INVALID_RESOURCE, f"{location} has no resourceType", location, "FHIR JSON resource"
        )
    return rtype


def _map_bundle(bundle: Record, ctx: RawContext, options: MappingOptions) -> list[CanonicalEvent]:
    raw_entries = bundle.get("entry")
    entries_in = raw_entries if isinstance(raw_entries, list) else []
    for position, raw in enumerate(entries_in):
        if isinstance(raw, dict) and "resource" in raw:
            _resource_type(raw["resource"], f"Bundle.entry[{position}].resource")
    validate_bundle_shell(bundle)
    start = 0
    if entries_in and bundle.get("type") in ("history", "subscription-notification"):
        first = entries_in[0].get("resource") if isinstance(entries_in[0], dict) else None
        if isinstance(first, dict) and first.get("resourceType") in NOTIFICATION_STATUS_TYPES:
            start = 1  # the notification's status entry; the events follow it
    entries: list[_Entry] = []
    actions: list[tuple[int, Record, _Entry | None]] = []
    carried = 0
    for position in range(start, len(entries_in)):
        raw = entries_in[position]
        request = _dict(raw.get("request")) or {}
        method = request.get("method")
        if method == "DELETE":
            actions.append((position, raw, None))
            continue
        if method == "PATCH":
            raise MappingError(
                ReasonCode.UNSUPPORTED_REQUEST,
                "PATCH cannot be applied without the current resource",
                f"Bundle.entry[{position}].request.method",
                "stateless mapping",
            )
        resource = raw.get("resource")
        if method in ("GET", "HEAD") or resource is None:
            continue  # a read, or an id-only notification entry: fetched by the connector, not mapped here
        rtype = resource["resourceType"]
        if rtype == "OperationOutcome":
            continue  # a searchset's warnings, not data
        carried += 1
        if rtype not in MAPPED_TYPES and rtype not in SUPPORTING_TYPES:
            continue
        validate_resource(resource, rtype, f"Bundle.entry[{position}]: ")
        response = _dict(raw.get("response")) or {}
        entry = _Entry(
            resource, rtype, position, _str(raw.get("fullUrl")), _etag_version(response.get("etag"))
        )
        entries.append(entry)
        if rtype in MAPPED_TYPES:
            actions.append((position, raw, entry))
    doc = _Doc(ctx, options, entries)
    events: list[CanonicalEvent] = []
    for position, raw, action_entry in actions:
        if action_entry is None:
            retraction = _retraction(doc, position, raw)
            if retraction is not None:
                events.append(retraction)
        else:
            events.append(_MAPPERS[action_entry.rtype](doc, action_entry))
    if carried and not any(e is not None for _, _, e in actions) and not events:
        raise MappingError(
            ReasonCode.UNSUPPORTED_RESOURCE,
            "the Bundle holds no resource type this hub maps",
            "Bundle.entry",
            "mapped types",
        )
    return events


def map_fhir(payload: bytes, ctx: RawContext, options: MappingOptions) -> list[CanonicalEvent]:
    """Map one raw FHIR JSON payload; raises MappingError with a content-free reason."""
    data = parse_json(payload)
    rtype = _resource_type(data, "payload")
    if rtype == "Bundle":
        return _map_bundle(data, ctx, options)
    if rtype not in MAPPED_TYPES:
        raise MappingError(
            ReasonCode.UNSUPPORTED_RESOURCE,
            f"{_known_type(rtype)} is not a resource type this hub maps",
            "resourceType",
            "mapped types",
        )
    validate_resource(data, rtype, "")
    entry = _Entry(data, rtype, None)
    return [_MAPPERS[rtype](_Doc(ctx, options, [entry]), entry)]
