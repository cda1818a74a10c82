"""The entry point :func:`map_fhir`: one raw payload (a lone resource or a Bundle) → canonical events.

Apart from the mappers because this is where the payload as a whole is judged — parsed, validated
(Bundle shell, then each entry), notification status entries, reads and OperationOutcomes skipped,
PATCH refused — and each mapped entry is dispatched to its resource type's mapper or to a retraction.

What the payload is judged by is not decided here but in ``formats/fhir/admission.py``, which the FHIR
door calls with the same inputs before it answers 2xx (issue #18): which entries are mapped
(``walk_bundle``), and every rule that refuses a validated resource (``check_mappable`` through
``check_bundle``), checked before any mapping so the mappers only read what is known to map.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from fhir.resources.R4B import get_fhir_model_class

from formats.clinical.codes import Record
from formats.fhir.admission import (
    check_bundle,
    check_entry_resources,
    check_mappable,
    resource_type,
    walk_bundle,
)
from formats.fhir.validate import parse_json, validate_bundle_shell, validate_resource
from formats.reasons import ReasonCode, Refused
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
from streams.normalize.fhir.read import _dict, _etag_version
from streams.normalize.fhir.vocabulary import MAPPED_TYPES
from streams.normalize.options import MappingOptions
from streams.normalize.result import CanonicalEvent, Mapped, MappingError

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


def _map_bundle(bundle: Record, ctx: RawContext, options: MappingOptions) -> Mapped:
    check_entry_resources(bundle)
    validate_bundle_shell(bundle)
    walk = walk_bundle(bundle)
    entries: dict[int, _Entry] = {}
    for walked in walk.resources:
        validate_resource(walked.resource, walked.rtype, f"Bundle.entry[{walked.position}]: ")
        response = _dict(walked.entry.get("response")) or {}
        entries[walked.position] = _Entry(
            walked.resource,
            walked.rtype,
            walked.position,
            walked.full_url,
            _etag_version(response.get("etag")),
        )
    doc = _Doc(ctx, options, list(entries.values()))
    check_bundle(walk, doc.scope)
    events: list[CanonicalEvent] = []
    for walked in walk.actions:
        if walked.delete:
            retraction = _retraction(doc, walked.position, walked.entry)
            if retraction is not None:
                events.append(retraction)
        else:
            entry = entries[walked.position]
            events.append(_MAPPERS[entry.rtype](doc, entry))
    return Mapped(events, doc.dropped)


def _map(payload: bytes, ctx: RawContext, options: MappingOptions) -> Mapped:
    data = parse_json(payload)
    rtype = resource_type(data, "payload")
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
    doc = _Doc(ctx, options, [entry])
    check_mappable(data, rtype, "", doc.scope)
    return Mapped([_MAPPERS[rtype](doc, entry)], doc.dropped)


def map_fhir(payload: bytes, ctx: RawContext, options: MappingOptions) -> Mapped:
    """Map one raw FHIR JSON payload; raises MappingError with a content-free reason (the shared
    checks of formats/fhir raise its base, Refused: each is re-raised as the MappingError it is)."""
    try:
        return _map(payload, ctx, options)
    except MappingError:
        raise
    except Refused as exc:
        raise MappingError(exc.code, exc.reason, exc.location, exc.rule) from None
