"""DG1 as canonical Conditions and PR1 as canonical Procedures: the coded stay of ADT and BAR messages.

Apart because the PMSI conventions (CIM-10 FR diagnoses with their DP/DR/DAS role, CCAM acts with
activity and phase, the BAR^P12 action codes) are the coded-stay feed's own rules, and because a bad
DG1 or PR1 must cost only itself: each segment is mapped alone, and a rule it breaks (no code, a code
not shaped as its system's, an unreadable date) leaves that segment out as a *partial mapping* while
the patient, the movement and the other segments go on (see result.Mapped and docs/mapping-hl7.md).

Which fields are read, and why those, is documented in docs/mapping-hl7.md (DG1 and PR1 tables):
French senders put the PMSI role in DG1-6, DG1-17 or DG1-21, and a CCAM act's activity and phase after
its code in PR1-3; the names of persons (DG1-16, PR1-8, PR1-11, PR1-12) are never read.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from formats.clinical.codes import CCAM, CIM10, ICDO3, coding
from formats.clinical.pmsi import (
    ccam_code,
    cim10_code,
    is_ccam_system,
    is_cim10_system,
    is_icdo3_system,
    pmsi_role,
)
from formats.clinical.times import ClinicalTime
from formats.hl7.coverage import ADT_MERGE
from formats.reasons import ReasonCode
from streams.normalize.hl7.fields import Record, _fields, _first, _first_rep, _leaves
from streams.normalize.hl7.state import _DG1_SIZE, _PR1_SIZE, _Mapping
from streams.normalize.result import CanonicalEvent, MappingError

# ADT events whose DG1/PR1 are not mapped: a cancellation restates the context of the movement it
# withdraws (its diagnoses are not newly recorded), and an A40 merge carries identities only.
ADT_WITHOUT_CODED_STAY: Final = frozenset({"A11", "A12", "A13", ADT_MERGE})

_PV1_VISIT: Final = 19
# HL7 table 0052 (DG1-6 diagnosis type) → FHIR condition-ver-status.
_VERIFICATION: Final[dict[str, str]] = {"A": "provisional", "W": "provisional", "F": "confirmed"}
# HL7 table 0206 (DG1-21, PR1-20 segment action code, used by BAR^P12): A add, U update, D delete,
# X no change. The canonical records carry no segment identifier, so an update or a delete is an
# event of its own (``*.updated`` / ``*.deleted``, entered-in-error), never a retraction.
_CONDITION_EVENTS: Final[dict[str, str]] = {"U": "condition.updated", "D": "condition.deleted"}
_PROCEDURE_EVENTS: Final[dict[str, str]] = {"U": "procedure.updated", "D": "procedure.deleted"}
_DELETE: Final = "D"
_PRINCIPAL_PRIORITY: Final = "1"  # HL7 table 0359 (DG1-15): 1 = the primary diagnosis
_DIAGNOSIS_CATEGORY: Final = "encounter-diagnosis"  # FHIR condition-category: a DG1 belongs to a stay
_TOPOGRAPHY: Final = re.compile(r"C[0-9]{2}(?:\.[0-9])?", re.ASCII)
_MORPHOLOGY: Final = re.compile(r"[0-9]{4}/[0-9]", re.ASCII)

_Triplet = tuple[str, str, str]  # (code, text, coding system) of a CWE


def _coded_stay(m: _Mapping, ref: Record, when: ClinicalTime | None) -> list[CanonicalEvent]:
    """Every DG1 and PR1 of the message, in message order; each belongs to the visit of the PV1 before
    it (a BAR^P01 repeats PV1 per account). A segment breaking a rule is dropped, not the message."""
    msg = m.message
    if msg.segment("DG1") is None and msg.segment("PR1") is None:
        return []  # most ADT carry no coded stay: no walk over the segments
    d = m.d
    events: list[CanonicalEvent] = []
    visit: Record | None = None
    facility: Record | None = None
    dg1_count = pr1_count = 0
    for seg in msg.segments:
        name = seg.name
        if name == "PV1":
            visit = m.visit(_fields(seg, d, _PV1_VISIT)[_PV1_VISIT])
        elif name == "DG1":
            dg1_count += 1
            try:
                events.append(_condition(m, _fields(seg, d, _DG1_SIZE), dg1_count, ref, visit, when))
            except MappingError as exc:
                m.drop(exc.rejection())
        elif name == "PR1":
            pr1_count += 1
            if pr1_count == 1:
                facility = m.organization_from_msh()
            try:
                events.append(
                    _procedure(m, _fields(seg, d, _PR1_SIZE), pr1_count, ref, visit, when, facility)
                )
            except MappingError as exc:
                m.drop(exc.rejection())
    return events


def _condition(
    m: _Mapping, f: list[str], n: int, ref: Record, visit: Record | None, when: ClinicalTime | None
) -> CanonicalEvent:
    d = m.d
    at = f"DG1({n})"
    code, others, tumour = _diagnosis_code(m, f[3], f"{at}-3")
    recorded = m.time(f[5], f"{at}-5")
    kind = _first(f[6], d).strip().upper()
    action = _first(f[21], d).strip().upper()
    # The PMSI role, wherever the sender put it (DG1-6 type, DG1-17 classification, DG1-21); without
    # one, priority 1 (the primary diagnosis) is the DP.
    role = pmsi_role(kind) or pmsi_role(_first(f[17], d)) or pmsi_role(action)
    if role is None and _first(f[15], d).strip() == _PRINCIPAL_PRIORITY:
        role = "DP"
    record: Record = {
        "envelope": None,
        "patient": ref,
        "encounter": visit,
        "code": code,
        "additional_codings": others,
        "category": _DIAGNOSIS_CATEGORY,
        "diagnosis_role": role,
        "clinical_status": None,
        "verification_status": "entered-in-error" if action == _DELETE else _VERIFICATION.get(kind),
        "onset_time": None,
        "onset_time_precision": None,
        "recorded_time": recorded.instant if recorded else None,
        "tumour": tumour,
    }
    event_type = _CONDITION_EVENTS.get(action, "condition.recorded")
    return m.event("condition", f"DG1[{n}]", event_type, recorded or when, record)


def _procedure(
    m: _Mapping,
    f: list[str],
    n: int,
    ref: Record,
    visit: Record | None,
    when: ClinicalTime | None,
    facility: Record | None,
) -> CanonicalEvent:
    at = f"PR1({n})"
    code, others, activity, phase = _act_code(m, f[3], f"{at}-3")
    start = m.time(f[5], f"{at}-5")
    action = _first(f[20], m.d).strip().upper()
    record: Record = {
        "envelope": None,
        "patient": ref,
        "encounter": visit,
        "code": code,
        "additional_codings": others,
        "activity": activity,
        "phase": phase,
        "status": "entered-in-error" if action == _DELETE else "completed",
        "performed_start": start.instant if start else None,
        "performed_end": None,
        "performed_time_precision": start.precision if start else None,
        # The facility that sent the stay (MSH-4); PR1 names persons only (surgeon, anaesthetist).
        "performer_organization": facility,
    }
    event_type = _PROCEDURE_EVENTS.get(action, "procedure.recorded")
    return m.event("procedure", f"PR1[{n}]", event_type, start or when, record)


# -- codes ---------------------------------------------------------------------------------------------


def _triplets(m: _Mapping, raw: str, location: str, what: str) -> list[_Triplet]:
    """The primary and alternate (code, text, system) triplets of a CWE that carry a code."""
    d = m.d
    c = _leaves(_first_rep(raw, d), d, 6) if raw else [""] * 6
    found = [(t[0].strip(), t[1], t[2].strip()) for t in ((c[0], c[1], c[2]), (c[3], c[4], c[5]))]
    present = [t for t in found if t[0]]
    if not present:
        raise MappingError(ReasonCode.NO_CODE, f"the {what} has no code", location, what)
    return present


def _is(m: _Mapping, name: str, test: Callable[[str | None], bool]) -> bool:
    """Whether a CWE-3 name designates a system, as sent or as the mapping options resolve it."""
    return bool(name) and (test(name) or test(m.system_uri(name)))


def _diagnosis_code(m: _Mapping, raw: str, location: str) -> tuple[Record, list[Record], Record | None]:
    """(code, additional codings, tumour) of DG1-3: the CIM-10 triplet wherever the sender put it.

    Any ICD-10/CIM-10 designation is read as CIM-10 FR (the PMSI codes with the ATIH's CIM-10 FR), the
    code normalised to its dotted form; a code under that system that is not shaped as CIM-10 breaks
    the rule. An ICD-O-3 alternate (topography or morphology) also fills ``tumour``.
    """
    present = _triplets(m, raw, location, "CIM-10 diagnosis")
    chosen = next((t for t in present if _is(m, t[2], is_cim10_system)), present[0])
    if _is(m, chosen[2], is_cim10_system):
        normalised = cim10_code(chosen[0])
        if normalised is None:
            raise MappingError(
                ReasonCode.BAD_CODE,
                f"{location} is not a CIM-10 code (a letter, two digits, an optional subdivision)",
                location,
                "CIM-10",
            )
        code = coding(CIM10, normalised, chosen[1])
    else:
        code = coding(m.system_uri(chosen[2]), chosen[0], chosen[1])
    others: list[Record] = []
    topography = morphology = None
    for t in present:
        if t is chosen:
            continue
        if _is(m, t[2], is_icdo3_system):
            other = coding(ICDO3, t[0], t[1])
            if topography is None and _TOPOGRAPHY.fullmatch(t[0]):
                topography = other
            elif morphology is None and _MORPHOLOGY.fullmatch(t[0]):
                morphology = other
        elif _is(m, t[2], is_cim10_system):
            other = coding(CIM10, cim10_code(t[0]) or t[0], t[1])
        else:
            other = coding(m.system_uri(t[2]), t[0], t[1])
        others.append(other)
    tumour = None
    if topography is not None or morphology is not None:
        tumour = {"topography": topography, "morphology": morphology, "stage": None}
    return code, others, tumour


def _act_code(m: _Mapping, raw: str, location: str) -> tuple[Record, list[Record], str | None, str | None]:
    """(code, additional codings, activity, phase) of PR1-3: the CCAM triplet wherever the sender put
    it, its activity and phase read after the 7-character code (``HHFA016-1-0``, ``HHFA01610``)."""
    present = _triplets(m, raw, location, "CCAM act")
    chosen = next((t for t in present if _is(m, t[2], is_ccam_system)), present[0])
    activity = phase = None
    if _is(m, chosen[2], is_ccam_system):
        parsed = ccam_code(chosen[0])
        if parsed is None:
            raise MappingError(
                ReasonCode.BAD_CODE,
                f"{location} is not a CCAM code (four letters, three digits, optional activity and phase)",
                location,
                "CCAM",
            )
        act, activity, phase = parsed
        code = coding(CCAM, act, chosen[1])
    else:
        code = coding(m.system_uri(chosen[2]), chosen[0], chosen[1])
    others: list[Record] = []
    for t in present:
        if t is chosen:
            continue
        if _is(m, t[2], is_ccam_system):
            parsed = ccam_code(t[0])
            others.append(coding(CCAM, parsed[0] if parsed else t[0], t[1]))
        else:
            others.append(coding(m.system_uri(t[2]), t[0], t[1]))
    return code, others, activity, phase
