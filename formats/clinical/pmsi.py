"""The French PMSI nomenclatures: CIM-10 FR (diagnoses) and CCAM (acts) as senders name and write them.

The PMSI (programme de médicalisation des systèmes d'information) codes every hospital stay with the
ATIH's CIM-10 FR, a national extension of WHO ICD-10, and every technical act with the CCAM. Hospital
systems name these code systems in many ways (HL7 table 0396 ``I10``, ``CIM10``, an OID, a URI) and
write the codes in several forms (``C34.1`` or ``C341``; ``HHFA016`` followed by its activity and phase).
Which name means which system, and what a well-formed code is, are decided here once, for every mapper
(HL7 v2 DG1/PR1 today; FHIR and the cohort rules can ask the same functions).

Sources of the identifiers (see docs/mapping-hl7.md):

* CIM-10: ANS terminology ``TRE_R310-CIM10`` (OID 2.16.840.1.113883.6.3, the WHO ICD-10 OID, which the
  CI-SIS also uses for CIM-10) and ``TRE_R311-CIM10Atih`` "CIM-10 FR à usage PMSI" (OID
  1.2.250.1.213.2.67); the ANS terminology server publishes it as
  ``https://smt.esante.gouv.fr/terminologie-cim-10`` (the canonical system, ``codes.CIM10``).
* CCAM: CI-SIS OID 1.2.250.1.215.300.1; 1.2.250.1.213.2.5 is the former OID still found in CDA and HL7
  feeds; ``https://smt.esante.gouv.fr/terminologie-ccam`` (``codes.CCAM``).
* ICD-O-3 (CIM-O-3): OID 2.16.840.1.113883.6.43.1 (``codes.ICDO3``).
* PMSI diagnosis roles: ATIH guide méthodologique MCO (DP diagnostic principal, DR diagnostic relié,
  DAS diagnostic associé significatif, DAD donnée à visée documentaire).
"""

from __future__ import annotations

import re
from typing import Final

from formats.clinical.codes import CCAM, CIM10, ICD10, ICDO3

CIM10_OID: Final = "2.16.840.1.113883.6.3"  # ICD-10; CI-SIS names CIM-10 with it (ANS TRE_R310-CIM10)
CIM10_ATIH_OID: Final = "1.2.250.1.213.2.67"  # CIM-10 FR à usage PMSI (ANS TRE_R311-CIM10Atih)
CCAM_OID: Final = "1.2.250.1.215.300.1"  # CCAM (CI-SIS)
CCAM_FORMER_OID: Final = "1.2.250.1.213.2.5"  # the CCAM's former OID, still sent by some systems
ICDO3_OID: Final = "2.16.840.1.113883.6.43.1"

# Every spelling of a system, compared upper-case, without a trailing "/" and without "urn:oid:".
_CIM10_NAMES: Final = frozenset(
    {
        "I10",  # HL7 table 0396: ICD-10
        "ICD10",
        "ICD-10",
        "ICD10FR",
        "ICD-10-FR",
        "CIM10",
        "CIM-10",
        "CIM10FR",
        "CIM-10-FR",
        "CIM10ATIH",
        "CIM10PMSI",
        CIM10_OID,
        CIM10_ATIH_OID,
        CIM10.upper(),
        ICD10.upper(),
        "HTTP://HL7.ORG/FHIR/SID/ICD-10-FR",
    }
)
_CCAM_NAMES: Final = frozenset({"CCAM", CCAM_OID, CCAM_FORMER_OID, CCAM.upper()})
_ICDO3_NAMES: Final = frozenset({"ICDO3", "ICD-O-3", "CIMO3", "CIM-O-3", ICDO3_OID, ICDO3.upper()})

# CIM-10: a letter, two digits (the category), then up to four characters of subdivision (the ATIH
# extends WHO's fourth character with fifth and sixth ones, some with "+").
_CIM10: Final = re.compile(r"([A-Z][0-9]{2})\.?([0-9A-Z+]{0,4})", re.ASCII)
# Dagger and asterisk marks of the dual classification, appended by some systems: not part of the code.
_CIM10_MARKS: Final = "*\u2020"
# CCAM: four letters, three digits; then, optionally, the activity (1-9) and the phase (0-9), either
# written right after the code (HHFA01610) or each after the same separator (HHFA016-1-0, HHFA016 1 0).
_CCAM: Final = re.compile(r"([A-Z]{4}[0-9]{3})(?:([1-9])([0-9])?|([-/_ .])([1-9])(?:\4([0-9]))?)?", re.ASCII)

# PMSI role of a diagnosis, as French systems spell it.
_ROLES: Final[dict[str, str]] = {
    "DP": "DP",
    "DR": "DR",
    "DAS": "DAS",
    "DA": "DAS",
    "DASS": "DAS",
    "DAD": "DAD",
}


def _system_key(name: str) -> str:
    key = name.strip().upper().rstrip("/")
    return key[8:] if key.startswith("URN:OID:") else key


def is_cim10_system(name: str | None) -> bool:
    """Whether a coding-system name, OID or URI designates ICD-10 / CIM-10 (read as CIM-10 FR)."""
    return bool(name) and _system_key(name or "") in _CIM10_NAMES


def is_ccam_system(name: str | None) -> bool:
    return bool(name) and _system_key(name or "") in _CCAM_NAMES


def is_icdo3_system(name: str | None) -> bool:
    return bool(name) and _system_key(name or "") in _ICDO3_NAMES


def cim10_code(text: str) -> str | None:
    """The CIM-10 code in its one canonical form, dotted (``C34.1``, ``C34``), or None when ``text`` is
    not shaped as a CIM-10 code. Case, surrounding spaces, a missing dot and a dagger/asterisk mark are
    forgiven; anything else (two dots, a digit first, non-ASCII characters) is not a CIM-10 code."""
    t = text.strip().upper().rstrip(_CIM10_MARKS).rstrip()
    if not t.isascii():
        return None
    match = _CIM10.fullmatch(t)
    if match is None:
        return None
    category, subdivision = match.groups()
    return f"{category}.{subdivision}" if subdivision else category


def ccam_code(text: str) -> tuple[str, str | None, str | None] | None:
    """(7-character CCAM code, activity, phase) of an act as written, or None when ``text`` is not shaped
    as a CCAM code. Activity and phase are None when the text does not carry them."""
    t = text.strip().upper()
    if not t.isascii():
        return None
    match = _CCAM.fullmatch(t)
    if match is None:
        return None
    code, activity, phase, _, sep_activity, sep_phase = match.groups()
    return code, activity or sep_activity, phase or sep_phase


def pmsi_role(text: str) -> str | None:
    """DP, DR, DAS or DAD from a sender's spelling (``DA`` and ``DASS`` are DAS), else None."""
    return _ROLES.get(text.strip().upper()) if text else None
