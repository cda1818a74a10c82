"""Which HL7 v2 message types and trigger events the hub maps: one table for the door and the mapper.

The MLLP door answers AA only for a message the normalize stage will map (listed ADT events,
BAR^P01/P05/P12, ORU^R01). Before this table the door accepted any ADT or ORU and the mapper refused
A14, A17, A34, A45 and others: the sender was told "stored" for messages that could only ever reach
``dlq.normalize``. The door now refuses an event that is not here (AR, HL7 error 201), and
``streams/normalize/hl7/dispatch.py`` maps exactly these; ``tests/unit/test_hl7_coverage.py`` holds the
two equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from formats.hl7.er7 import Message

# ADT movements that carry an encounter (PV1-19 visit), with the encounter event each one gives.
ADT_MOVEMENTS: Final[Mapping[str, str]] = {
    "A01": "encounter.admitted",
    "A02": "encounter.transferred",
    "A03": "encounter.discharged",
    "A04": "encounter.registered",
    "A05": "encounter.preadmitted",
    "A06": "encounter.class_changed",
    "A07": "encounter.class_changed",
    "A11": "encounter.admission_cancelled",
    "A12": "encounter.transfer_cancelled",
    "A13": "encounter.discharge_cancelled",
    "Z99": "encounter.movement_updated",  # IHE PAM France: update of a movement
}
ADT_PATIENT_ONLY: Final = frozenset({"A28", "A31"})  # identity only; a PV1 is ignored
ADT_UPDATE: Final = "A08"  # patient, and the encounter when PV1-19 names a visit
ADT_MERGE: Final = "A40"
# Patient accounting (HL7 v2.5 chapter 6): add and update an account, update its diagnoses and
# procedures. The mapper reads their PID and the DG1/PR1 of each account (the coded stay, PMSI).
BAR_ACCOUNTS: Final = frozenset({"P01", "P05", "P12"})

MAPPED: Final[Mapping[str, frozenset[str]]] = {
    "ADT": frozenset({*ADT_MOVEMENTS, *ADT_PATIENT_ONLY, ADT_UPDATE, ADT_MERGE}),
    "BAR": BAR_ACCOUNTS,
    "ORU": frozenset({"R01"}),
}


def event_of(message: Message) -> tuple[str, str]:
    """(MSH-9.1, trigger event) as both the door and the mapper read them: the first subcomponent of
    each component (an ``ADT&`` read whole by one and cut by the other made the door answer AA for what
    the mapper then refused, found by `make fuzz`), and for an ADT with MSH-9.2 empty, EVN-1."""
    msh = message.segments[0]
    code = msh.value(9, 1, 1) or ""
    trigger = msh.value(9, 1, 2) or ""
    if code == "ADT" and not trigger:
        evn = message.segment("EVN")
        trigger = (evn.value(1) if evn is not None else None) or ""
    return code, trigger


def is_mapped(message_type: str, trigger: str) -> bool:
    """``trigger`` is MSH-9.2, or EVN-1 for an ADT that leaves MSH-9.2 empty (as the mapper reads it)."""
    return trigger in MAPPED.get(message_type, ())


def mapped_labels() -> list[str]:
    """``ADT^A01``-style labels, for an answer or a document listing what is accepted."""
    return [f"{t}^{e}" for t, events in sorted(MAPPED.items()) for e in sorted(events)]
