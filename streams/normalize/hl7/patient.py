"""PID as the canonical Patient record: names, birth, sex, addresses, telecom, death, marital status.

A separate module because the same record is built for ADT identity feeds and for each PID of an A40
merge, with the PAM France conventions (birth names in XPN-3, birth place as a BDL address) decided in
one place.
"""

from __future__ import annotations

from typing import Final

from formats.hl7.er7 import Delimiters
from streams.normalize.hl7.fields import _NULL, Record, _first, _leaves
from streams.normalize.hl7.state import _Mapping

_SEX: Final[dict[str, str]] = {
    "M": "male",
    "F": "female",
    "O": "other",
    "A": "other",
    "U": "unknown",
    "N": "unknown",
}
# HL7 table 0200 (XPN-7) → FHIR name-use. B (name at birth) is the official name in France (INS traits).
_NAME_USE: Final[dict[str, str]] = {
    "L": "official",
    "B": "official",
    "D": "usual",
    "M": "maiden",
    "N": "nickname",
    "S": "anonymous",
}
# HL7 table 0190 (XAD-7) → FHIR address use; M (mailing) is a type, not a use, hence absent.
_ADDRESS_USE: Final[dict[str, str]] = {
    "H": "home",
    "P": "home",
    "L": "home",
    "B": "work",
    "O": "work",
    "C": "temp",
    "BA": "old",
}
_BIRTH_PLACE: Final = "BDL"
# XTN-3 equipment type → FHIR ContactPoint.system (pager has no slot in the schema: other).
_TELECOM_SYSTEM: Final[dict[str, str]] = {
    "PH": "phone",
    "CP": "phone",
    "FX": "fax",
    "INTERNET": "email",
    "X.400": "email",
    "BP": "other",
    "MD": "other",
    "TDD": "other",
    "TTY": "other",
}
_TELECOM_USE: Final[dict[str, str]] = {
    "PRN": "home",
    "ORN": "home",
    "WPN": "work",
    "VHN": "temp",
}
# HL7 table 0002 → HL7 v3 MaritalStatus. v2 U means "unknown" but v3 U means "unmarried": not mapped.
_MARITAL: Final[dict[str, str]] = {
    "M": "M",
    "S": "S",
    "D": "D",
    "W": "W",
    "A": "L",
    "E": "L",
    "N": "A",
    "I": "I",
    "P": "T",
    "R": "T",
    "C": "T",
    "G": "T",
    "B": "U",
}


def _patient_record(m: _Mapping, ref: Record, parts: list[str]) -> Record:
    d = m.d
    addresses, birth_place = _addresses(parts[11], d)
    telecom = _telecom(parts[13], "home", d)
    if parts[14]:
        telecom.extend(_telecom(parts[14], "work", d))
    death_date = m.date_text(parts[29], "PID-29")
    deceased_flag = _first(parts[30], d).upper() if parts[30] else ""
    deceased = True if deceased_flag == "Y" else False if deceased_flag == "N" else None
    if deceased is None and death_date:
        deceased = True  # a date of death states the death even when PID-30 is left empty
    return {
        "envelope": None,
        "patient": ref,
        "names": _names(parts[5], d),
        "birth_date": m.date_text(parts[7], "PID-7"),
        "birth_place_code": birth_place,
        "sex": _SEX.get(_first(parts[8], d).upper()) if parts[8] else None,
        "addresses": addresses,
        "telecom": telecom,
        "deceased": deceased,
        "death_date": death_date,
        "marital_status": _MARITAL.get(_first(parts[16], d)) if parts[16] else None,
        "merged_into": None,
    }


def _names(raw: str, d: Delimiters) -> list[Record]:
    names: list[Record] = []
    if not raw:
        return names
    for rep in raw.split(d.repetition):
        if not rep or rep == _NULL:
            continue
        c = _leaves(rep, d, 7)
        family = c[0]
        given = _given(c[1].split(), c[2].split())
        if not family and not given:
            continue
        names.append({"use": _NAME_USE.get(c[6].upper()), "family": family or None, "given": given})
    return names


def _given(first: list[str], further: list[str]) -> list[str]:
    """The given names once each, in order, from XPN-2 (first) and XPN-3 (further), split on spaces.

    PAM France puts the first given name in XPN-2 and all birth given names, space-separated and
    starting with the first, in XPN-3; elsewhere XPN-3 holds only the further names. XPN-2 may itself be
    compound (``JEAN PIERRE``): when XPN-3 repeats it, wherever, XPN-3 is the list; otherwise the two
    are joined, without repeating the words XPN-3 starts with that end XPN-2.
    """
    n = len(first)
    if not n:
        return further
    if any(further[i : i + n] == first for i in range(len(further) - n + 1)):
        return further
    overlap = next((k for k in range(min(n, len(further)), 0, -1) if first[-k:] == further[:k]), 0)
    return [*first, *further[overlap:]]


def _addresses(raw: str, d: Delimiters) -> tuple[list[Record], str | None]:
    addresses: list[Record] = []
    birth_place: str | None = None
    if not raw:
        return addresses, birth_place
    for rep in raw.split(d.repetition):
        if not rep or rep == _NULL:
            continue
        c = _leaves(rep, d, 9)
        kind = c[6].upper()
        if kind == _BIRTH_PLACE:
            # IHE PAM France: the birth place travels as an address typed BDL, INSEE code in XAD-9.
            birth_place = birth_place or c[8] or None
            continue
        lines = [line for line in (c[0], c[1]) if line]
        city, postal, country = c[2], c[4], c[5]
        if not (lines or city or postal or country):
            continue
        addresses.append(
            {
                "use": _ADDRESS_USE.get(kind),
                "lines": lines,
                "city": city or None,
                "postal_code": postal or None,
                "country": country or None,
            }
        )
    return addresses, birth_place


def _telecom(raw: str, default_use: str, d: Delimiters) -> list[Record]:
    points: list[Record] = []
    if not raw:
        return points
    for rep in raw.split(d.repetition):
        if not rep or rep == _NULL:
            continue
        c = _leaves(rep, d, 12)
        use_code = c[1].upper()
        equipment = c[2].upper()
        system = _TELECOM_SYSTEM.get(equipment) or ("email" if use_code == "NET" else "phone")
        # E-mail addresses live in XTN-4; numbers in XTN-12, else in their parts, else in the old XTN-1.
        value = (c[3] or c[0]) if system == "email" else (c[11] or f"{c[4]}{c[5]}{c[6]}" or c[0] or c[3])
        if not value:
            continue
        use = "mobile" if equipment == "CP" else _TELECOM_USE.get(use_code, default_use)
        points.append({"system": system, "value": value, "use": use})
    return points
