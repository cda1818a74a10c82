"""Settings a mapper obeys; one frozen object so a mapping is a pure function of (input, options)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import tzinfo

from formats.clinical.times import PARIS
from formats.clinical.units import DEFAULT_CONVERSIONS


@dataclass(frozen=True, slots=True)
class MappingOptions:
    # Local time zone of the sending hospitals, for times given without a UTC offset.
    timezone: tzinfo = PARIS
    # UCUM unit -> UCUM unit the destination wants (e.g. "[lb_av]" -> "kg").
    unit_conversions: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_CONVERSIONS))
    # HL7 coding-system names (CWE-3) -> canonical system URIs; unknown names are kept and flagged local.
    code_systems: Mapping[str, str] = field(
        default_factory=lambda: {
            "LN": "http://loinc.org",
            "LOINC": "http://loinc.org",
            "SCT": "http://snomed.info/sct",
            "SNM": "http://snomed.info/sct",
            "SNOMED": "http://snomed.info/sct",
            "MDC": "urn:iso:std:iso:11073:10101",
            "I10": "http://hl7.org/fhir/sid/icd-10",
            "CIM10": "https://smt.esante.gouv.fr/terminologie-cim-10",
            "CIM-10": "https://smt.esante.gouv.fr/terminologie-cim-10",
            "CCAM": "https://smt.esante.gouv.fr/terminologie-ccam",
            "ICDO3": "http://terminology.hl7.org/CodeSystem/icd-o-3",
            "UCUM": "http://unitsofmeasure.org",
        }
    )
