"""The resource types, profile URLs, code systems and required bindings the FHIR mapper recognises.

Kept apart so that accepting a new profile, code system or binding is one edit in one place, and so that
the checks fhir.resources does not make (required bindings of the elements that fill closed canonical
fields, FR Core's identity reliability) sit next to the vocabularies they check against.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from formats.clinical import codes as common
from formats.clinical.codes import Record
from formats.clinical.identity import reliability_of
from formats.reasons import ReasonCode
from streams.normalize.fhir.read import _coding, _codings, _dicts, _first_coding, _split_primary, _str
from streams.normalize.result import MappingError

MAPPED_TYPES: Final = frozenset(
    {"Patient", "Encounter", "Observation", "Condition", "Procedure", "DiagnosticReport"}
)
# Validated and used to resolve references inside a Bundle; they produce no event of their own.
SUPPORTING_TYPES: Final = frozenset({"Organization", "Location", "Device", "Specimen"})
# First entry of a Subscription notification: R4 Backport IG (Parameters) or R4B/R5 (SubscriptionStatus).
NOTIFICATION_STATUS_TYPES: Final = frozenset({"Parameters", "SubscriptionStatus"})

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
_TOPOGRAPHY: Final = re.compile(r"C\d\d(?:\.\d)?")
_MORPHOLOGY: Final = re.compile(r"\d{4}/\d")

# Required bindings of the elements that fill closed canonical fields (fhir.resources does not check them).
_ENDINGS: Final = ("entered-in-error", "unknown")
_STATUSES: Final[Mapping[str, frozenset[str]]] = {
    "Observation": frozenset(
        {"registered", "preliminary", "final", "amended", "corrected", "cancelled", *_ENDINGS}
    ),
    "Encounter": frozenset(
        {"planned", "arrived", "triaged", "in-progress", "onleave", "finished", "cancelled", *_ENDINGS}
    ),
    "Procedure": frozenset(
        {"preparation", "in-progress", "not-done", "on-hold", "stopped", "completed", *_ENDINGS}
    ),
    "DiagnosticReport": frozenset(
        {"registered", "partial", "preliminary", "final", "amended", "corrected", "appended", "cancelled"}
        | set(_ENDINGS)
    ),
}
_GENDERS: Final = frozenset({"male", "female", "other", "unknown"})
# A delete names the version it removes (If-Match / etag); integer versions are numbered from 1 by
# every mainstream server, so the earlier ones can be named too. Bounded: a retraction stays small.
_MAX_RETRACTED_VERSIONS: Final = 100
_LINKAGE: Final = "patient linkage"


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


def _status(resource: Record, rtype: str) -> str:
    status = resource.get("status")
    if status is None:
        return "unknown"  # absent with a data-absent extension (_status): FHIR allows it
    if not isinstance(status, str) or status not in _STATUSES[rtype]:
        raise MappingError(
            ReasonCode.INVALID_RESOURCE,
            f"{rtype}.status: code outside the required value set",
            f"{rtype}.status",
            "required binding",
        )
    return str(status)


def _observation_code(concept: Any, location: str) -> tuple[Record, list[Record]]:
    codings = _codings(concept)
    if not codings:
        raise MappingError(
            ReasonCode.NO_CODE, f"{location} has no coding with a code", location, "coded observation"
        )
    primary, others, standard = _split_primary(codings, common.STANDARD_OBSERVATION_SYSTEMS)
    code = common.observation_code(primary["system"], primary["code"], primary["display"], not standard)
    return code, others
