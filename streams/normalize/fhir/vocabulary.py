"""The profile URLs and code systems the FHIR mapper recognises.

Kept apart so that accepting a new profile or code system is one edit in one place, and so that FR
Core's identity reliability sits next to the vocabularies it reads. The resource types and the required
bindings (statuses, gender) are the door's as much as the mapper's: they live in
``formats/fhir/admission.py``, which both call.
"""

from __future__ import annotations

import re
from typing import Any, Final

from formats.clinical import codes as common
from formats.clinical.codes import Record
from formats.clinical.identity import reliability_of
from formats.fhir.admission import MAPPED_TYPES as MAPPED_TYPES
from formats.fhir.admission import require_code, status_of
from streams.normalize.fhir.read import _coding, _codings, _dicts, _first_coding, _split_primary, _str

FR_CORE_IDENTITY_RELIABILITY: Final = (
    "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability"
)
FR_CORE_INSEE_CODE: Final = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-address-insee-code"
BIRTH_PLACE: Final = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"
MCODE_HISTOLOGY: Final = (
    "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-histology-morphology-behavior"
)
OBSERVATION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
FINESS_OID: Final = "1.2.250.1.71.4.2.2"

_CIM10_SYSTEMS: Final = frozenset(
    {common.CIM10, common.ICD10, "http://hl7.org/fhir/sid/icd-10-fr", "urn:oid:2.16.840.1.113883.6.3"}
)
_CCAM_SYSTEMS: Final = frozenset({common.CCAM, "urn:oid:1.2.250.1.215.300.1"})
_ICDO3_SYSTEMS: Final = frozenset({common.ICDO3, "urn:oid:2.16.840.1.113883.6.43.1"})
_TOPOGRAPHY: Final = re.compile(r"C\d\d(?:\.\d)?", re.ASCII)
_MORPHOLOGY: Final = re.compile(r"\d{4}/\d", re.ASCII)

# A delete names the version it removes (If-Match / etag); integer versions are numbered from 1 by
# every mainstream server, so the earlier ones can be named too. Bounded: a retraction stays small.
_MAX_RETRACTED_VERSIONS: Final = 100


def _ext_code(ext: Record) -> str | None:
    """The code an extension carries, whichever value[x] the sender chose for it."""
    code = _str(ext.get("valueCode")) or _str(ext.get("valueString"))
    if code:
        return code
    coding = _coding(ext.get("valueCoding")) or _first_coding(ext.get("valueCodeableConcept"))
    return str(coding["code"]) if coding else None


def _identity_status(resource: Record, has_ins: bool) -> str | None:
    """The canonical identity status (PID-32 vocabulary) from FR Core's identity-reliability extension.

    FR Core's code system (HL7 table 0445 as published by Interop'Santé) has no QUAL code: a qualified
    identity (RNIV) is a *validated* one (VALI) whose INS was obtained from the INSi teleservice
    (``methodCollection`` INSI). That combination, with an INS present, becomes QUAL; a QUAL sent as such
    (PAM France vocabulary, allowed by the extensible binding) stays QUAL. Any other status or attribute
    next to it (DOUT, FICT, USUR...) forbids qualification and is what is reported.
    """
    statuses: list[str] = []
    methods: list[str] = []
    for ext in _dicts(resource.get("extension")):
        if ext.get("url") != FR_CORE_IDENTITY_RELIABILITY:
            continue
        for sub in _dicts(ext.get("extension")):
            code = _ext_code(sub)
            if code is None:
                continue
            if sub.get("url") == "identityStatus":
                statuses.append(code.strip().upper())
            elif sub.get("url") == "methodCollection":
                methods.append(code.strip().upper())
        direct = _ext_code(ext)  # a simple-valued variant seen in the wild
        if direct:
            statuses.append(direct.strip().upper())
    return reliability_of(statuses, methods, has_ins)


# Required bindings of the elements that fill closed canonical fields: the door's check (admission.py).
_status: Final = status_of


def _observation_code(concept: Any, location: str) -> tuple[Record, list[Record]]:
    require_code(concept, location, "coded observation")
    codings = _codings(concept)
    primary, others, standard = _split_primary(codings, common.STANDARD_OBSERVATION_SYSTEMS)
    code = common.observation_code(primary["system"], primary["code"], primary["display"], not standard)
    return code, others
