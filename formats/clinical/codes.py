"""Record pieces every mapper builds the same way, so HL7 v2 and FHIR events cannot drift apart in shape.

The canonical schemas repeat a few small records (Coding, ObservationCode, Organization); building them
in one place keeps the field order and the null conventions identical whatever the source protocol,
which is what lets consumers and golden files compare events from both doors.
"""

from __future__ import annotations

from typing import Any, Final

from formats.clinical.units import MDC_SYSTEM, UCUM_SYSTEM

Record = dict[str, Any]

LOINC: Final = "http://loinc.org"
SNOMED: Final = "http://snomed.info/sct"
MDC: Final = MDC_SYSTEM
UCUM: Final = UCUM_SYSTEM
ICD10: Final = "http://hl7.org/fhir/sid/icd-10"
CIM10: Final = "https://smt.esante.gouv.fr/terminologie-cim-10"
CCAM: Final = "https://smt.esante.gouv.fr/terminologie-ccam"
ICDO3: Final = "http://terminology.hl7.org/CodeSystem/icd-o-3"

# Codes that national platforms accept for an observation without a mapping table; anything else is
# the sender's own code and is flagged ``local`` so a destination can refuse or map it.
STANDARD_OBSERVATION_SYSTEMS: Final = frozenset({LOINC, SNOMED, MDC})


def coding(system: str | None, code: str, display: str | None = None) -> Record:
    return {"system": system or None, "code": code, "display": display or None}


def observation_code(system: str | None, code: str, display: str | None, local: bool) -> Record:
    return {"system": system or None, "code": code, "display": display or None, "local": local}


def organization(org_id: str | None, id_system: str | None, name: str | None) -> Record | None:
    """None when nothing identifies the organisation: an all-null record would only look like data."""
    if not (org_id or name):
        return None
    return {"id": org_id or None, "id_system": id_system or None, "name": name or None}
