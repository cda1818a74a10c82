"""Whether one canonical record is evidence that its patient belongs to a cohort.

Pure: a decoded canonical record in, the cohorts it includes its patient in out. The cohort stage asks
this of every record; the demo's accounting and ``affluent trace`` can ask it too, so "why did INCa get
this patient" has one answer. Evidence today is a diagnosis (``condition``): its CIM-10 code or
additional codings, or its CIM-O-3 topography and morphology. Pathology reports carrying morphology join
when the pathology issue maps them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from formats.clinical.codes import CIM10, ICD10
from streams.cohort.definition import NEVER_EVIDENCE, Cohort

DIAGNOSIS_SYSTEMS = frozenset({CIM10, ICD10, None})  # None: a DG1 without a coding system named


@dataclass(frozen=True, slots=True)
class Evidence:
    """Why a patient entered a cohort: the event and what in it matched (codes, never free text)."""

    cohort: str
    event_id: str
    kind: str  # "diagnosis" | "morphology" | "topography"
    code: str
    at: datetime | None  # the clinical time of the evidence (onset, else recording, else event time)


def _codes(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found = [record.get("code"), *(record.get("additional_codings") or [])]
    return [c for c in found if isinstance(c, Mapping) and c.get("code")]


def _when(record: Mapping[str, Any]) -> datetime | None:
    for value in (
        record.get("onset_time"),
        record.get("recorded_time"),
        record["envelope"].get("event_time"),
    ):
        if isinstance(value, datetime):
            return value
    return None


def evidence(kind: str, record: Mapping[str, Any], cohorts: Iterable[Cohort]) -> list[Evidence]:
    """The cohorts ``record`` includes its patient in, one Evidence each (the first match per cohort)."""
    if kind != "condition":
        return []
    status = record.get("verification_status")
    if status in NEVER_EVIDENCE:
        return []
    event_id = str(record["envelope"]["event_id"])
    at = _when(record)
    tumour = record.get("tumour") or {}
    topography = (tumour.get("topography") or {}).get("code")
    morphology = (tumour.get("morphology") or {}).get("code")
    out: list[Evidence] = []
    for cohort in cohorts:
        if status is not None and status not in cohort.verification:
            continue
        match = _match(cohort, record, topography, morphology)
        if match is not None:
            out.append(Evidence(cohort.name, event_id, match[0], match[1], at))
    return out


def _match(
    cohort: Cohort, record: Mapping[str, Any], topography: str | None, morphology: str | None
) -> tuple[str, str] | None:
    if cohort.cim10 is not None:
        for coding in _codes(record):
            if coding.get("system") in DIAGNOSIS_SYSTEMS and cohort.cim10.matches(str(coding["code"])):
                return "diagnosis", str(coding["code"])
    if cohort.morphology is not None and morphology and cohort.morphology.matches(morphology):
        # A morphology alone (e.g. any /3) includes; with a topography rule, both must match.
        if cohort.topography is None:
            return "morphology", morphology
        if topography and cohort.topography.matches(topography):
            return "morphology", f"{topography} {morphology}"
        return None
    if cohort.morphology is None and cohort.topography is not None and topography:
        return ("topography", topography) if cohort.topography.matches(topography) else None
    return None
