"""Mappers of the administrative resources: Patient (identity, demographics, merges) and Encounter (visit).

Apart from the clinical mappers because they carry what identifies a person and a stay — names, addresses,
birth place, locations — and are read and reviewed with that in mind.
"""

from __future__ import annotations

from formats.clinical.codes import Record
from formats.fhir.admission import check_gender, check_visit
from streams.normalize.fhir.document import _Doc
from streams.normalize.fhir.entry import _Entry
from streams.normalize.fhir.read import (
    _bool,
    _coding,
    _dict,
    _dicts,
    _first_code,
    _first_coding,
    _list,
    _str,
)
from streams.normalize.fhir.vocabulary import BIRTH_PLACE, FR_CORE_INSEE_CODE, _ext_code, _status
from streams.normalize.result import CanonicalEvent


def _map_patient(doc: _Doc, entry: _Entry) -> CanonicalEvent:
    r = entry.resource
    names = []
    for name in _dicts(r.get("name")):
        family = _str(name.get("family"))
        given = [g.strip() for g in _list(name.get("given")) if _str(g)]
        if family or given:
            names.append(
                {"use": _str(name.get("use")), "family": family.strip() if family else None, "given": given}
            )
    addresses = []
    for addr in _dicts(r.get("address")):
        lines = [line.strip() for line in _list(addr.get("line")) if _str(line)]
        record = {
            "use": _str(addr.get("use")),
            "lines": lines,
            "city": _str(addr.get("city")),
            "postal_code": _str(addr.get("postalCode")),
            "country": _str(addr.get("country")),
        }
        if lines or record["city"] or record["postal_code"] or record["country"]:
            addresses.append(record)
    telecom = []
    for cp in _dicts(r.get("telecom")):
        value = _str(cp.get("value"))
        if value:
            telecom.append(
                {
                    "system": _str(cp.get("system")) or "other",
                    "value": value.strip(),
                    "use": _str(cp.get("use")),
                }
            )
    check_gender(r)
    gender = r.get("gender")
    deceased = _bool(r.get("deceasedBoolean"))
    death_date = doc.date_text(r.get("deceasedDateTime"), "Patient.deceasedDateTime")
    if death_date is not None:
        deceased = True
    merged_into = None
    for i, link in enumerate(_dicts(r.get("link"))):
        if link.get("type") == "replaced-by":
            merged_into = doc.patient_from_reference(link.get("other"), entry, f"Patient.link[{i}].other")[
                "key"
            ]
            break
    meta = _dict(r.get("meta")) or {}
    body: Record = {
        "patient": doc.patient_identity(entry),
        "names": names,
        "birth_date": doc.date_text(r.get("birthDate"), "Patient.birthDate"),
        "birth_place_code": _birth_place_code(r),
        "sex": gender,
        "addresses": addresses,
        "telecom": telecom,
        "deceased": deceased,
        "death_date": death_date,
        "marital_status": _first_code(r.get("maritalStatus")),
        "merged_into": merged_into,
    }
    when = doc.time(meta.get("lastUpdated"), "Patient.meta.lastUpdated")
    return doc.event("patient", entry, "patient.updated", when, body)


def _birth_place_code(resource: Record) -> str | None:
    """The INSEE code of the birth place (an INS trait), from FR Core's coded birth-place address."""
    for ext in _dicts(resource.get("extension")):
        if ext.get("url") != BIRTH_PLACE:
            continue
        address = _dict(ext.get("valueAddress")) or {}
        for sub in _dicts(address.get("extension")):
            if sub.get("url") == FR_CORE_INSEE_CODE:
                return _ext_code(sub)
    return None


def _location_record(doc: _Doc, items: list[tuple[Record, _Entry]]) -> Record | None:
    """Encounter.location entries (ward, room, bed, each its own entry) folded into one Location record."""
    levels: dict[str, str | None] = {
        "service": None,
        "room": None,
        "bed": None,
        "facility": None,
        "medical_unit": None,
    }
    slot_of = {
        "wa": "service",
        "ward": "service",
        "ro": "room",
        "bd": "bed",
        "si": "facility",
        "bu": "facility",
    }
    for item, holder in items:
        ref, target = doc.referenced(item.get("location"), holder, "Location")
        if ref is None:
            continue
        physical = _first_code(item.get("physicalType"))
        name = _str(ref.get("display"))
        if target is not None:
            loc = target.resource
            physical = physical or _first_code(loc.get("physicalType"))
            ident = next((i for i in _dicts(loc.get("identifier")) if _str(i.get("value"))), None)
            name = _str(loc.get("name")) or (_str(ident.get("value")) if ident else None) or name
        slot = slot_of.get((physical or "").lower(), "service")
        if name and levels[slot] is None:
            levels[slot] = name.strip()
    return levels if any(levels.values()) else None


def _map_encounter(doc: _Doc, entry: _Entry) -> CanonicalEvent:
    r = entry.resource
    check_visit(r, entry.full_url)
    visit = doc.encounter_identity(entry)
    assert visit is not None  # check_visit's rule is exactly when encounter_identity finds none
    status = _status(r, "Encounter")
    start, end = doc.period(r.get("period"), "Encounter.period")
    current: list[tuple[Record, _Entry]] = []
    prior: list[tuple[Record, _Entry]] = []
    for item in _dicts(r.get("location")):
        state = item.get("status")
        if state == "completed":
            prior = [(item, entry)]
        elif state in (None, "active", "reserved"):
            current.append((item, entry))
    hospitalization = _dict(r.get("hospitalization")) or {}
    encounter_class = _coding(r.get("class"))
    body: Record = {
        "patient": doc.patient_from_reference(r.get("subject"), entry, "Encounter.subject"),
        "encounter": visit,
        "status": status,
        "encounter_class": encounter_class["code"] if encounter_class else None,
        "movement": None,
        "location": _location_record(doc, current),
        "prior_location": _location_record(doc, prior),
        "period_start": start.instant if start else None,
        "period_end": end.instant if end else None,
        "admit_source": _first_coding(hospitalization.get("admitSource")),
        "discharge_disposition": _first_coding(hospitalization.get("dischargeDisposition")),
        "service_provider": doc.organization(r.get("serviceProvider"), entry),
    }
    when = end if status == "finished" and end is not None else start
    return doc.event("encounter", entry, "encounter.updated", when, body)
