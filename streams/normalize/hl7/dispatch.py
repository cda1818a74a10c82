"""The entry point: which message types and trigger events this hub maps, and to which sections.

Apart so that what is accepted (and what is refused as an unsupported event) is decided in one short
module, above every section and imported by none of them.
"""

from __future__ import annotations

from formats.clinical.times import ClinicalTime
from formats.hl7.coverage import ADT_MERGE, ADT_PATIENT_ONLY, event_of, is_mapped
from formats.hl7.er7 import Er7Error, parse
from formats.reasons import ReasonCode
from streams.normalize.envelope import RawContext
from streams.normalize.hl7.diagnoses import ADT_WITHOUT_CODED_STAY, _coded_stay
from streams.normalize.hl7.encounter import _encounter
from streams.normalize.hl7.fields import Record, _fields
from streams.normalize.hl7.merges import _merges
from streams.normalize.hl7.patient import _patient_record
from streams.normalize.hl7.results import _map_oru
from streams.normalize.hl7.state import _EVN_SIZE, _PID_SIZE, _PV1_SIZE, _Mapping
from streams.normalize.options import MappingOptions
from streams.normalize.result import CanonicalEvent, Mapped, MappingError, Rejection


def map_hl7(text: str, ctx: RawContext, options: MappingOptions) -> Mapped:
    """Map one decoded HL7 v2 message; raises MappingError when a rule fails (see run_mapper)."""
    try:
        message = parse(text)
    except Er7Error as exc:
        raise MappingError(
            ReasonCode.UNPARSABLE, f"not a readable ER7 message ({exc.code})", exc.location, "ER7"
        ) from None
    m = _Mapping(message, ctx, options)
    code, trigger = event_of(message)
    # The one table the MLLP door also reads: what is acknowledged there is what is mapped here.
    if is_mapped(code, trigger):
        if code == "ADT":
            return m.result(_map_adt(m, trigger))
        return m.result(_map_bar(m) if code == "BAR" else _map_oru(m))
    raise MappingError(
        ReasonCode.UNSUPPORTED_EVENT, "message type or trigger event is not one this hub maps", "MSH-9"
    )


def _identity(m: _Mapping) -> tuple[Record, list[str], ClinicalTime | None, ClinicalTime | None]:
    """(patient ref, PID fields, EVN-6 occurred, EVN-6 else EVN-2) shared by the ADT and BAR events."""
    msg = m.message
    pid = msg.segment("PID")
    if pid is None:
        raise MappingError(ReasonCode.NO_PATIENT, "the message has no PID segment", "PID-3")
    pid_parts = _fields(pid, m.d, _PID_SIZE)
    ref = m.patient(pid_parts[3], pid_parts[32], "PID-3")
    evn = msg.segment("EVN")
    evn_parts = _fields(evn, m.d, _EVN_SIZE) if evn is not None else [""] * (_EVN_SIZE + 1)
    occurred = m.time(evn_parts[6], "EVN-6")
    return ref, pid_parts, occurred, occurred or m.time(evn_parts[2], "EVN-2")


def _map_adt(m: _Mapping, trigger: str) -> list[CanonicalEvent]:
    msg = m.message
    d = m.d
    ref, pid_parts, occurred, when = _identity(m)

    patient_type = "patient.registered" if trigger == "A28" else "patient.updated"
    events = [m.event("patient", "PID", patient_type, when, _patient_record(m, ref, pid_parts))]
    if trigger == ADT_MERGE:
        events.extend(_merges(m, when))
        return events
    if trigger not in ADT_PATIENT_ONLY:
        pv1 = msg.segment("PV1")
        pv1_parts = _fields(pv1, d, _PV1_SIZE) if pv1 is not None else [""] * (_PV1_SIZE + 1)
        visit = m.visit(pv1_parts[19])
        if visit is not None:
            events.append(_encounter(m, trigger, ref, visit, pv1_parts, occurred, when))
        elif trigger != "A08":  # A08 without a visit is an identity update: nothing is left out
            # The movement cannot be correlated with anything later, but the patient's identity and
            # demographics are sound: they go on, the movement is dead-lettered (a partial mapping).
            m.drop(
                Rejection(
                    ReasonCode.NO_VISIT,
                    "a movement needs a visit number; the patient was mapped without it",
                    "PV1-19",
                    "visit number",
                )
            )
    if trigger not in ADT_WITHOUT_CODED_STAY:
        events.extend(_coded_stay(m, ref, when))
    return events


def _map_bar(m: _Mapping) -> list[CanonicalEvent]:
    """BAR^P01/P05/P12: the patient (PID, as an ADT gives it), then each account's DG1 and PR1. The
    accounts' PV1 only name the visit of their diagnoses and acts: a BAR moves no one."""
    ref, pid_parts, _, when = _identity(m)
    events = [m.event("patient", "PID", "patient.updated", when, _patient_record(m, ref, pid_parts))]
    events.extend(_coded_stay(m, ref, when))
    return events
