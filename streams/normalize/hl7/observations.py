"""One OBX as a canonical Observation: value by type, unit to UCUM, reference range, device, status.

Apart because reading a result value is the densest set of rules in the mapper (value types, French
decimal commas, unit conversion with converted bounds, IEEE 11073 units and containment for PCD-01)
and is tested and reviewed on its own, while the OBR grouping around it stays short.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from formats.clinical.codes import LOINC
from formats.clinical.times import ClinicalTime
from formats.clinical.units import UCUM_SYSTEM, mdc_to_ucum, quantity, to_ucum, ucum_quantity
from formats.hl7.er7 import Delimiters
from formats.reasons import ReasonCode
from streams.normalize.hl7.fields import (
    _NULL,
    Record,
    _comparator_number,
    _first,
    _first_rep,
    _hd_in_component,
    _leaves,
    _number,
    _text,
)
from streams.normalize.hl7.state import _MDC_SYSTEM_NAME, _Mapping
from streams.normalize.result import CanonicalEvent, MappingError

# HL7 table 0085 (OBX-11) → FHIR Observation.status.
_OBX_STATUS: Final[dict[str, str]] = {
    "F": "final",
    "C": "corrected",
    "P": "preliminary",
    "X": "cancelled",
    "R": "preliminary",
    "S": "preliminary",
    "I": "registered",
    "D": "entered-in-error",
    "W": "entered-in-error",
    "U": "final",
    "N": "cancelled",
}
_V3_INTERPRETATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
# Codes of HL7 table 0078 that are also v3 ObservationInterpretation codes; others keep no system.
_INTERPRETATION_CODES: Final = frozenset(
    {
        *("L", "H", "LL", "HH", "LU", "HU", "<", ">", "N", "A", "AA", "U", "D", "B", "W"),
        *("S", "R", "I", "MS", "VS", "NEG", "POS", "IND", "DET", "ND", "E", "EX", "HX", "LX"),
        *("IE", "NR", "RR", "NCL", "NS", "SDD", "TOX", "WR", "QCF", "CAR", "AC"),
    }
)
_IMAGING_SECTIONS: Final = frozenset({"RAD", "RX", "CT", "MR", "US", "NMR", "NMS", "VUS", "XRC", "CUS"})
# LOINC codes of the FHIR vital-signs profile: these are vital signs, not laboratory results.
_VITAL_SIGNS_LOINC: Final = frozenset(
    {
        *("85353-1", "9279-1", "8867-4", "2708-6", "59408-5", "8310-5", "8302-2", "9843-4"),
        *("29463-7", "39156-5", "85354-9", "8480-6", "8462-4", "8478-0"),
    }
)
# IHE PCD's OID for IEEE EUI-64 device identifiers, the Device.identifier.system FHIR sources use: the
# same device read through either door gets the same id_system.
_EUI64_SYSTEM: Final = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680"


class _Order:
    """One OBR and what follows it until the next OBR: its observations, notes and specimen."""

    __slots__ = ("devices", "effective", "index", "issued", "notes", "observations", "parts", "section")

    def __init__(self, m: _Mapping, index: int, parts: list[str]) -> None:
        self.index = index
        self.parts = parts
        self.effective = m.time(parts[7], f"OBR({index})-7")
        self.issued = m.time(parts[22], f"OBR({index})-22")
        self.section = _first(parts[24], m.d) if parts[24] else ""
        self.observations: list[CanonicalEvent] = []
        self.notes: list[str] = []
        # PCD-01 containment tree: the device of each MDS, for the metrics below it without OBX-18.
        self.devices: dict[str, tuple[str, str | None]] = {}


# As the FHIR mapper does: entered-in-error results are withdrawn like cancelled ones.
_OBSERVATION_EVENT_TYPES: Final[dict[str, str]] = {
    "C": "observation.corrected",
    "X": "observation.cancelled",
    "N": "observation.cancelled",
    "D": "observation.cancelled",
    "W": "observation.cancelled",
}


def _position(sub_id: str) -> list[str] | None:
    """OBX-4 as an IEEE 11073 containment position: dotted ordinals ``<MDS>.<VMD>.<channel>.<metric>``.

    IHE PCD TF-2 numbers the containment tree in OBX-4, a ``0`` standing for a level that does not
    apply; device-level rows stop early (``1``, ``1.1``, ``1.0.1``) or end in zeros (``1.0.0.0``). Further
    levels may follow a metric (its attributes).
    """
    if not sub_id or not sub_id.isascii():
        return None
    levels = sub_id.split(".")
    if not all(level.isdigit() for level in levels):
        return None
    return levels


def _is_metric(levels: list[str]) -> bool:
    """A metric has all four levels and a metric ordinal; MDS, VMD and channel rows do not."""
    return len(levels) >= 4 and levels[3].strip("0") != ""  # not int(): an ordinal may be 5,000 digits


def _device(d: Delimiters, raw: str) -> tuple[str, str | None] | None:
    """(id, id_system) of the first OBX-18 equipment identifier (EI); an EUI-64 gets IHE PCD's OID."""
    for rep in raw.split(d.repetition):
        c = _leaves(rep, d, 4)
        ident = c[0]
        if not ident:
            continue
        namespace, universal, universal_type = c[1], c[2], c[3].upper()
        kinds = {namespace.upper(), universal.upper(), universal_type}
        if "EUI-64" in kinds or "EUI64" in kinds:
            return ident, _EUI64_SYSTEM
        if universal and universal_type == "ISO":
            return ident, f"urn:oid:{universal}"
        return ident, (namespace or universal or None)
    return None


def _unit_quantity(m: _Mapping, value: float, unit_raw: str) -> tuple[Record, bool]:
    """The Quantity record of a value in OBX-6's unit, and whether a conversion changed the unit.

    The unit's coding system decides how to read it: MDC codes go through the IEEE 11073 table, a unit
    the sender declares UCUM is trusted even when our synonym list does not know it, anything else is
    free text looked up in the synonym list.
    """
    conversions: Mapping[str, str] = m.options.unit_conversions
    if not unit_raw:
        return quantity(value, "", conversions).as_record(), False
    d = m.d
    c = _leaves(_first_rep(unit_raw, d), d, 3)
    ident, text, system = c[0], c[1], c[2].upper()
    original = ident or text
    if system == _MDC_SYSTEM_NAME:
        ucum = mdc_to_ucum(ident, text)
        q = (
            ucum_quantity(value, ucum, original, conversions)
            if ucum
            else quantity(value, original, conversions)
        )
        rec = q.as_record()
        rec["original_unit"] = original or None
        return rec, bool(ucum) and q.unit != ucum
    q = quantity(value, original, conversions)
    rec = q.as_record()
    if q.unit_system is None and original and system == "UCUM":
        rec["unit"], rec["unit_system"] = original, UCUM_SYSTEM
        return rec, False
    return rec, q.unit_system is not None and q.unit != to_ucum(original)


def _reference_range(m: _Mapping, raw: str, unit_raw: str, converted: bool) -> Record | None:
    if not raw:
        return None
    text = _text(_first_rep(raw, m.d), m.d).strip()
    if not text:
        return None
    low: float | None = None
    high: float | None = None
    if text[0] in "<>":
        comparator, bound = _comparator_number(text)
        if bound is not None:
            if comparator in ("<", "<="):
                high = bound
            else:
                low = bound
    else:
        dash = text.find("-", 1)
        if dash > 0:
            lo, hi = _number(text[:dash]), _number(text[dash + 1 :])
            if lo is not None and hi is not None:
                low, high = lo, hi
    if converted:
        # The bounds are in the sender's unit; a converted value must be compared with converted bounds.
        if low is not None:
            low = float(_unit_quantity(m, low, unit_raw)[0]["value"])
        if high is not None:
            high = float(_unit_quantity(m, high, unit_raw)[0]["value"])
    return {"low": low, "high": high, "text": text}


def _value(m: _Mapping, value_type: str, raw: str, unit_raw: str, location: str) -> tuple[str, Any, bool]:
    """(value field name, value, unit converted) for OBX-5 read per OBX-2; raw is non-empty.

    An empty field name means no value: the second item is then the data-absent reason, or None.
    """
    d = m.d
    first = _first_rep(raw, d)
    if value_type == "NM":
        comparator, number = _comparator_number(_text(first, d))
        if number is None:
            return "value_string", _text(first, d), False  # a text in a numeric result: kept, not refused
        rec, converted = _unit_quantity(m, number, unit_raw)
        rec["comparator"] = comparator
        return "value_quantity", rec, converted
    if value_type == "SN":
        c = _leaves(first, d, 4)
        comparator, num1, separator, num2 = c[0], c[1], c[2], c[3]
        number = _number(num1)
        if number is not None and not separator and not num2:
            rec, converted = _unit_quantity(m, number, unit_raw)
            rec["comparator"] = comparator if comparator in ("<", ">", "<=", ">=") else None
            return "value_quantity", rec, converted
        # Ratios (1:128) and ranges (10-20) have no slot in the canonical model: kept as text.
        text = f"{'' if comparator == '=' else comparator}{num1}{separator}{num2}"
        return ("value_string", text, False) if text else ("", None, False)
    if value_type in ("CE", "CWE", "CNE", "CF"):
        c = _leaves(first, d, 6)
        coding, _, _ = m.best_coding(c)
        if coding is None:
            text = c[1] or c[4]
            return ("value_string", text, False) if text else ("", None, False)
        return "value_code", coding, False
    if value_type == "DT":
        date = m.date_text(first, location)
        return ("value_string", date, False) if date else ("", None, False)
    if value_type in ("TS", "DTM"):
        when = m.time(first, location)
        if when is None:
            return "", None, False
        if when.precision in ("year", "month", "day"):
            return "value_string", when.date_text(m.options.timezone), False
        return "value_string", when.instant.isoformat(), False
    if value_type in ("ED", "RP"):
        return "", "unsupported", False  # encapsulated documents and references: not a canonical value
    # ST, TX, FT, and any other type read as text; repetitions are lines.
    text = "\n".join(_text(rep, d) for rep in raw.split(d.repetition)).strip("\n")
    return ("value_string", text, False) if text else ("", None, False)


def _category(m: _Mapping, code: Record, order: _Order | None) -> str:
    system = code["system"]
    if system == m.mdc:
        return "device"
    if system == LOINC and code["code"] in _VITAL_SIGNS_LOINC:
        return "vital-signs"
    if order is not None and order.section.upper() in _IMAGING_SECTIONS:
        return "imaging"
    return "laboratory"


def _observation(
    m: _Mapping,
    parts: list[str],
    occurrence: int,
    index: str,
    order: _Order | None,
    ref: Record,
    visit: Record | None,
    facility: Record | None,
) -> CanonicalEvent | None:
    d = m.d
    location = f"OBX({occurrence})"
    value_type = _first(parts[2], d).upper() if parts[2] else ""
    raw_value = parts[5]
    has_value = bool(raw_value) and raw_value != _NULL
    sub_id = _first(parts[4], d).strip() if parts[4] else ""
    levels = _position(sub_id)
    device = _device(d, parts[18]) if parts[18] else None
    code, local, other = m.best_coding(_leaves(_first_rep(parts[3], d), d, 6))
    if code is None:
        raise MappingError(ReasonCode.NO_CODE, "the result has no observation identifier", f"{location}-3")
    # A lab OBX-4 is a plain sub-ID ("1", "2"): only a dotted position or an IEEE 11073 (MDC) row is
    # read as a place in a PCD-01 device tree.
    mdc = code["system"] == m.mdc
    if levels is not None and len(levels) == 1 and not mdc:
        levels = None
    hierarchy = sub_id if levels is not None and len(levels) > 1 else None
    mds = levels[0] if levels is not None else ""
    if device is not None and mds and order is not None:
        order.devices.setdefault(mds, device)
    if levels is not None and mdc and not has_value and not _is_metric(levels):
        # PCD-01 containment rows (MDS, VMD, channel) describe the device tree, not a measurement: they
        # only lend their OBX-18 device to the metrics of their MDS.
        return None
    if device is None and mds and order is not None:
        device = order.devices.get(mds)

    status_code = _first(parts[11], d).upper() if parts[11] else ""
    value_quantity = value_code = value_string = absent = None
    unit_raw = parts[6]
    converted = False
    if has_value:
        slot, value, converted = _value(m, value_type or "ST", raw_value, unit_raw, f"{location}-5")
        if slot == "value_quantity":
            value_quantity = value
        elif slot == "value_string":
            value_string = value
        elif slot == "value_code":
            value_code = value
        else:
            absent = value or "unknown"
    else:
        absent = "not-performed" if status_code in ("X", "N") else "unknown"

    effective = m.time(parts[14], f"{location}-14")
    issued: ClinicalTime | None = None
    if order is not None:
        effective = effective or order.effective
        issued = order.issued
    interpretation = (
        [
            {
                "system": _V3_INTERPRETATION if flag in _INTERPRETATION_CODES else None,
                "code": flag,
                "display": None,
            }
            for flag in (_first(rep, d) for rep in parts[8].split(d.repetition))
            if flag
        ]
        if parts[8]
        else []
    )
    code["local"] = local
    record: Record = {
        "envelope": None,
        "patient": ref,
        "encounter": visit,
        "status": _OBX_STATUS.get(status_code, "unknown"),
        "category": _category(m, code, order),
        "code": code,
        "additional_codings": [other] if other is not None else [],
        "value_quantity": value_quantity,
        "value_code": value_code,
        "value_string": value_string,
        "value_boolean": None,
        "data_absent_reason": absent,
        "reference_range": _reference_range(m, parts[7], unit_raw, converted),
        "interpretation": interpretation,
        "method": m.first_coding(parts[17]),
        "device": (
            {
                "id": device[0],
                "id_system": device[1],
                "model": None,
                "manufacturer": None,
                "hierarchy": hierarchy,
            }
            if device is not None
            else None
        ),
        "effective_time": effective.instant if effective else None,
        "effective_time_precision": effective.precision if effective else None,
        "issued": issued.instant if issued else None,
        "components": [],
        "specimen_type": None,
        "performer_organization": _organization(m, parts[23]) or facility,
    }
    event_type = _OBSERVATION_EVENT_TYPES.get(status_code, "observation.recorded")
    return m.event("observation", index, event_type, effective, record)


def _organization(m: _Mapping, raw: str) -> Record | None:
    """OBX-23 performing organisation (XON): name, identifier (XON-10, else XON-3) and its authority."""
    if not raw:
        return None
    d = m.d
    rep = _first_rep(raw, d)
    c = _leaves(rep, d, 10)
    name = c[0]
    ident = c[9] or c[2]
    if not name and not ident:
        return None
    id_system: str | None = None
    comps = rep.split(d.component)
    if ident and len(comps) > 5:
        namespace, oid = _hd_in_component(comps[5], d)
        id_system = f"urn:oid:{oid}" if oid else namespace
    return {"id": ident or None, "id_system": id_system, "name": name or None}
