"""DELETE entries of a Bundle → Retraction events naming what the mapper emitted for the deleted resource.

Its own module because a delete carries no resource to map: a stateless mapper can only name the events
of earlier versions from the version the delete removes, and must refuse what it cannot resolve.
"""

from __future__ import annotations

from formats.clinical.codes import Record
from formats.clinical.identity import LocalId, patient_ref
from formats.fhir.admission import delete_target
from streams.normalize.fhir.document import _Doc
from streams.normalize.fhir.entry import _scoped_envelope, resource_event_id
from streams.normalize.fhir.read import _dict, _etag_version
from streams.normalize.fhir.vocabulary import _MAX_RETRACTED_VERSIONS, MAPPED_TYPES
from streams.normalize.result import CanonicalEvent


def _retraction(doc: _Doc, position: int, raw: Record) -> CanonicalEvent | None:
    """A DELETE entry → Retraction DELETE of every event id the mapper can name for that resource.

    Versioned events are named from the deleted version down to version 1 (integer versions) — the
    delete carries that version in request.ifMatch (transaction) or response.etag (history). Events of
    unversioned resources were keyed on their content and cannot be named: target_source_reference
    ('<Type>/<id>') tells consumers what went. The patient is unknown to a stateless mapper: the
    retraction is keyed on the deleted resource reference (docs/mapping-fhir.md).
    """
    rtype, rid, _ = delete_target(raw, position, doc.ctx.facility)  # the door's rule: url and sender
    request = _dict(raw.get("request")) or {}
    if rtype not in MAPPED_TYPES:
        return None  # nothing was ever emitted for it
    response = _dict(raw.get("response")) or {}
    version = _etag_version(request.get("ifMatch")) or _etag_version(response.get("etag"))
    targets: list[str] = []
    if version is not None:
        if version.isdigit() and 0 < int(version) < 10**9:
            last = int(version)
            versions = [str(v) for v in range(max(1, last - _MAX_RETRACTED_VERSIONS + 1), last + 1)]
        else:
            versions = [version]
        targets = [resource_event_id(doc.ctx, rtype, rid, v) for v in versions]
    reference = f"{rtype}/{rid}"
    index = f"deleted/_history/{version}" if version else "deleted"
    patient = patient_ref([LocalId(reference, doc.ctx.facility, None)])  # delete_target saw a sender
    record: Record = {
        "envelope": _scoped_envelope(doc.ctx, reference, index, "retraction.issued", None),
        "patient": patient,
        "kind": "DELETE",
        "target_event_ids": targets,
        "target_source_reference": reference,
        "retired_patient": None,
        "reason_code": "source-deleted",
    }
    return CanonicalEvent("retraction", patient["key"], record)
