"""Mappers of the clinical resources: Observation, Condition, Procedure and DiagnosticReport.

Apart from the administrative mappers because they share the clinical readings — value[x], effective[x],
coded primaries among code systems (CIM-10, CCAM, LOINC, CIM-O-3) — and none of the identity handling.
"""

from __future__ import annotations

from typing import Any

from formats.clinical import codes as common
from formats.clinical.codes import Record
from formats.clinical.times import ClinicalTime
from formats.clinical.units import Quantity
from formats.fhir.admission import require_code, unsupported_value
from streams.normalize.fhir.document import _Doc
from streams.normalize.fhir.entry import _Entry, resource_event_id
from streams.normalize.fhir.read import (
    _bool,
    _codings,
    _dict,
    _dicts,
    _first_code,
    _first_coding,
    _norm_system,
    _number,
    _parse_reference,
    _split_primary,
    _str,
)
from streams.normalize.fhir.vocabulary import (
    _CCAM_SYSTEMS,
    _CIM10_SYSTEMS,
    _ICDO3_SYSTEMS,
    _MORPHOLOGY,
    _TOPOGRAPHY,
    MCODE_HISTOLOGY,
    OBSERVATION_CATEGORY,
    _observation_code,
    _status,
)
from streams.normalize.options import MappingOptions
from streams.normalize.result import CanonicalEvent


def _value_fields(doc: _Doc, r: Record, location: str) -> Record:
    """value[x] and dataAbsentReason of an Observation or a component, in canonical form."""
    fields: Record = {
        "value_quantity": None,
        "value_code": None,
        "value_string": None,
        "value_boolean": None,
        "data_absent_reason": _first_code(r.get("dataAbsentReason")),
    }
    if "valueQuantity" in r:
        fields["value_quantity"] = doc.quantity(r.get("valueQuantity"), f"{location}.valueQuantity")
    elif "valueCodeableConcept" in r:
        concept = _dict(r.get("valueCodeableConcept")) or {}
        fields["value_code"] = _first_coding(concept)
        if fields["value_code"] is None:
            fields["value_string"] = _str(concept.get("text"))
    elif "valueString" in r:
        fields["value_string"] = _str(r.get("valueString"))
    elif "valueBoolean" in r:
        fields["value_boolean"] = _bool(r.get("valueBoolean"))
    elif "valueInteger" in r:
        number = _number(r.get("valueInteger"), f"{location}.valueInteger")
        if number is not None:
            fields["value_quantity"] = Quantity(number, None, None, None).as_record()
    elif "valueDateTime" in r or "valueTime" in r:
        fields["value_string"] = _str(r.get("valueDateTime")) or _str(r.get("valueTime"))
    else:
        unsupported_value(r, location)
    return fields


def _interpretation(concepts: Any) -> list[Record]:
    return [c for concept in _dicts(concepts) for c in _codings(concept)]


def _map_observation(doc: _Doc, entry: _Entry) -> CanonicalEvent:
    r = entry.resource
    status = _status(r, "Observation")
    code, others = _observation_code(r.get("code"), "Observation.code")
    values = _value_fields(doc, r, "Observation")
    like = _dict(r.get("valueQuantity"))
    components = []
    for i, comp in enumerate(_dicts(r.get("component"))):
        where = f"Observation.component[{i}]"
        comp_code, _ = _observation_code(comp.get("code"), f"{where}.code")
        comp_values = _value_fields(doc, comp, where)
        components.append(
            {
                "code": comp_code,
                **{
                    k: comp_values[k]
                    for k in ("value_quantity", "value_code", "value_string", "value_boolean")
                },
                "data_absent_reason": comp_values["data_absent_reason"],
                "reference_range": doc.reference_range(
                    comp.get("referenceRange"), f"{where}.referenceRange", _dict(comp.get("valueQuantity"))
                ),
                "interpretation": _interpretation(comp.get("interpretation")),
            }
        )
    when = _effective(doc, r, "Observation")
    issued = doc.time(r.get("issued"), "Observation.issued")
    _, specimen = doc.referenced(r.get("specimen"), entry, "Specimen")
    category = None
    for concept in _dicts(r.get("category")):
        category = _first_code(concept, OBSERVATION_CATEGORY)
        if category:
            break
    body: Record = {
        "patient": doc.patient_from_reference(r.get("subject"), entry, "Observation.subject"),
        "encounter": doc.encounter_from_reference(r.get("encounter"), entry),
        "status": status,
        "category": category,
        "code": code,
        "additional_codings": others,
        **values,
        "reference_range": doc.reference_range(r.get("referenceRange"), "Observation.referenceRange", like),
        "interpretation": _interpretation(r.get("interpretation")),
        "method": _first_coding(r.get("method")),
        "device": doc.device(r.get("device"), entry),
        "effective_time": when.instant if when else None,
        "effective_time_precision": when.precision if when else None,
        "issued": issued.instant if issued else None,
        "components": components,
        "specimen_type": _first_coding(specimen.resource.get("type")) if specimen is not None else None,
        "performer_organization": doc.first_organization(r.get("performer"), entry),
    }
    event_type = {
        "amended": "observation.corrected",
        "corrected": "observation.corrected",
        "cancelled": "observation.cancelled",
        "entered-in-error": "observation.cancelled",
    }.get(status, "observation.recorded")
    return doc.event("observation", entry, event_type, when or issued, body)


def _effective(doc: _Doc, r: Record, rtype: str) -> ClinicalTime | None:
    if "effectiveDateTime" in r:
        return doc.time(r.get("effectiveDateTime"), f"{rtype}.effectiveDateTime")
    if "effectiveInstant" in r:
        return doc.time(r.get("effectiveInstant"), f"{rtype}.effectiveInstant")
    if "effectivePeriod" in r:
        start, end = doc.period(r.get("effectivePeriod"), f"{rtype}.effectivePeriod")
        return start or end
    return None


def _tumour(r: Record, codings: list[Record]) -> Record | None:
    """CIM-O-3 topography and morphology, wherever R4 senders put them (see docs/mapping-fhir.md)."""
    topography = None
    for site in _dicts(r.get("bodySite")):
        topography = next((c for c in _codings(site) if _norm_system(c["system"]) in _ICDO3_SYSTEMS), None)
        if topography:
            break
    morphology = None
    for ext in _dicts(r.get("extension")):
        if ext.get("url") == MCODE_HISTOLOGY:
            found = _codings(ext.get("valueCodeableConcept"))
            morphology = next((c for c in found if _norm_system(c["system"]) in _ICDO3_SYSTEMS), None) or (
                found[0] if found else None
            )
            break
    for c in codings:
        if _norm_system(c["system"]) not in _ICDO3_SYSTEMS:
            continue
        if topography is None and _TOPOGRAPHY.fullmatch(str(c["code"])):
            topography = c
        elif morphology is None and _MORPHOLOGY.fullmatch(str(c["code"])):
            morphology = c
    stage = None
    for st in _dicts(r.get("stage")):
        summary = _dict(st.get("summary")) or {}
        text = _first_code(summary) or _str(summary.get("text"))
        if text:
            stage = {"classification": None, "type": None, "summary": text, "t": None, "n": None, "m": None}
            break
    if topography is None and morphology is None and stage is None:
        return None
    return {"topography": topography, "morphology": morphology, "stage": stage}


def _map_condition(doc: _Doc, entry: _Entry) -> CanonicalEvent:
    r = entry.resource
    require_code(r.get("code"), "Condition.code", "CIM-10 diagnosis")
    codings = _codings(r.get("code"))
    primary, others, _ = _split_primary(codings, _CIM10_SYSTEMS | _cim10_option_systems(doc.options))
    onset = None
    if "onsetDateTime" in r:
        onset = doc.time(r.get("onsetDateTime"), "Condition.onsetDateTime")
    elif "onsetPeriod" in r:
        onset = doc.period(r.get("onsetPeriod"), "Condition.onsetPeriod")[0]
    recorded = doc.time(r.get("recordedDate"), "Condition.recordedDate")
    category = None
    for concept in _dicts(r.get("category")):
        category = _first_code(concept)
        if category:
            break
    body: Record = {
        "patient": doc.patient_from_reference(r.get("subject"), entry, "Condition.subject"),
        "encounter": doc.encounter_from_reference(r.get("encounter"), entry),
        "code": primary,
        "additional_codings": others,
        "category": category,
        "diagnosis_role": None,
        "clinical_status": _first_code(r.get("clinicalStatus")),
        "verification_status": _first_code(r.get("verificationStatus")),
        "onset_time": onset.instant if onset else None,
        "onset_time_precision": onset.precision if onset else None,
        "recorded_time": recorded.instant if recorded else None,
        "tumour": _tumour(r, codings),
    }
    return doc.event("condition", entry, "condition.recorded", onset or recorded, body)


def _cim10_option_systems(options: MappingOptions) -> frozenset[str]:
    return frozenset(_norm_system(options.code_systems.get(name)) for name in ("CIM10", "CIM-10", "I10"))


def _map_procedure(doc: _Doc, entry: _Entry) -> CanonicalEvent:
    r = entry.resource
    status = _status(r, "Procedure")
    require_code(r.get("code"), "Procedure.code", "CCAM act")
    codings = _codings(r.get("code"))
    ccam = _CCAM_SYSTEMS | {_norm_system(doc.options.code_systems.get("CCAM"))}
    primary, others, _ = _split_primary(codings, ccam)
    start = end = None
    if "performedDateTime" in r:
        start = doc.time(r.get("performedDateTime"), "Procedure.performedDateTime")
    elif "performedPeriod" in r:
        start, end = doc.period(r.get("performedPeriod"), "Procedure.performedPeriod")
    performer = None
    for perf in _dicts(r.get("performer")):
        performer = doc.organization(perf.get("actor"), entry) or doc.organization(
            perf.get("onBehalfOf"), entry
        )
        if performer:
            break
    body: Record = {
        "patient": doc.patient_from_reference(r.get("subject"), entry, "Procedure.subject"),
        "encounter": doc.encounter_from_reference(r.get("encounter"), entry),
        "code": primary,
        "additional_codings": others,
        "activity": None,
        "phase": None,
        "status": status,
        "performed_start": start.instant if start else None,
        "performed_end": end.instant if end else None,
        "performed_time_precision": start.precision if start else None,
        "performer_organization": performer,
    }
    return doc.event("procedure", entry, "procedure.recorded", start or end, body)


def _map_diagnostic_report(doc: _Doc, entry: _Entry) -> CanonicalEvent:
    r = entry.resource
    status = _status(r, "DiagnosticReport")
    require_code(r.get("code"), "DiagnosticReport.code", "coded report")
    codings = _codings(r.get("code"))
    primary, _, _ = _split_primary(codings, frozenset({common.LOINC}))
    when = _effective(doc, r, "DiagnosticReport")
    issued = doc.time(r.get("issued"), "DiagnosticReport.issued")
    results = []
    for ref in _dicts(r.get("result")):
        text = _str(ref.get("reference"))
        if text is None:
            continue
        target = doc.resolve(text, entry)
        if target is not None:
            if target.rtype == "Observation" and target.position is not None:
                results.append(doc.event_id(target))
            continue
        parsed = _parse_reference(text)
        if parsed is not None and parsed[0] == "Observation" and parsed[2] is not None:
            results.append(resource_event_id(doc.ctx, parsed[0], parsed[1], parsed[2]))
    category = None
    for concept in _dicts(r.get("category")):
        category = _first_code(concept)
        if category:
            break
    body: Record = {
        "patient": doc.patient_from_reference(r.get("subject"), entry, "DiagnosticReport.subject"),
        "encounter": doc.encounter_from_reference(r.get("encounter"), entry),
        "code": primary,
        "status": status,
        "category": category,
        "effective_time": when.instant if when else None,
        "effective_time_precision": when.precision if when else None,
        "issued": issued.instant if issued else None,
        "result_event_ids": results,
        "conclusion": _str(r.get("conclusion")),
        "conclusion_codes": [c for concept in _dicts(r.get("conclusionCode")) for c in _codings(concept)],
        "performer_organization": doc.first_organization(r.get("performer"), entry),
    }
    event_type = {
        "amended": "diagnostic_report.corrected",
        "corrected": "diagnostic_report.corrected",
        "cancelled": "diagnostic_report.cancelled",
        "entered-in-error": "diagnostic_report.cancelled",
    }.get(status, "diagnostic_report.issued")
    return doc.event("diagnostic_report", entry, event_type, when or issued, body)
