"""A40 identity merges: a retired identity closed with ``merged_into`` plus a MERGE retraction.

Apart because a merge is the one ADT event that rewrites what was already sent downstream; its event
pairing and keys are a contract with the pseudonymize and national stages, kept where it can be read on
its own.
"""

from __future__ import annotations

from formats.clinical.times import ClinicalTime
from formats.reasons import ReasonCode
from streams.normalize.hl7.fields import Record, _fields
from streams.normalize.hl7.patient import _names, _patient_record
from streams.normalize.hl7.state import _MRG_SIZE, _PID_SIZE, _Mapping
from streams.normalize.result import CanonicalEvent, MappingError


def _merges(m: _Mapping, when: ClinicalTime | None) -> list[CanonicalEvent]:
    """A40: each PID/MRG pair merges the MRG identity into the PID one.

    Two events per pair: the retired identity's Patient record with ``merged_into`` (keyed by the
    retired key, so it closes that identity's ordered stream), and a MERGE Retraction keyed by the
    surviving patient, which downstream stages apply to what they already sent.
    """
    d = m.d
    events: list[CanonicalEvent] = []
    survivor: Record | None = None
    pid_count = mrg_count = 0
    for seg in m.message.segments:
        name = seg.name
        if name == "PID":
            pid_count += 1
            parts = _fields(seg, d, _PID_SIZE)
            location = "PID-3" if pid_count == 1 else f"PID({pid_count})-3"
            survivor = m.patient(parts[3], parts[32], location)
            if pid_count > 1:
                record = _patient_record(m, survivor, parts)
                events.append(m.event("patient", f"PID[{pid_count}]", "patient.updated", when, record))
        elif name == "MRG" and survivor is not None:
            mrg_count += 1
            parts = _fields(seg, d, _MRG_SIZE)
            location = "MRG-1" if mrg_count == 1 else f"MRG({mrg_count})-1"
            retired = m.patient(parts[1], "", location)
            index = "MRG" if mrg_count == 1 else f"MRG[{mrg_count}]"
            retired_record: Record = {
                "envelope": None,
                "patient": retired,
                "names": _names(parts[7], d),
                "birth_date": None,
                "birth_place_code": None,
                "sex": None,
                "addresses": [],
                "telecom": [],
                "deceased": None,
                "death_date": None,
                "marital_status": None,
                "merged_into": survivor["key"],
            }
            events.append(m.event("patient", index, "patient.merged", when, retired_record))
            retraction: Record = {
                "envelope": None,
                "patient": survivor,
                "kind": "MERGE",
                "target_event_ids": [],
                "target_source_reference": None,
                "retired_patient": retired,
                "reason_code": "identity-merge",
            }
            events.append(m.event("retraction", index, "retraction.issued", when, retraction))
    if mrg_count == 0:
        raise MappingError(
            ReasonCode.NO_MERGED_PATIENT, "a merge needs an MRG segment with the retired identifier", "MRG-1"
        )
    return events
