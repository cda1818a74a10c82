"""PV1 and the IHE PAM (France) ZBE movement as the canonical Encounter record.

Apart because movements carry the subtle rules of the ADT feed (cancellations, historic movements, Z99
updates, which trigger changes the visit status) and those rules should be read and reviewed without
the patient identity or results code around them.
"""

from __future__ import annotations

from typing import Final

from formats.clinical.times import ClinicalTime
from formats.hl7.coverage import ADT_MOVEMENTS
from formats.hl7.er7 import Delimiters
from streams.normalize.hl7.fields import Record, _fields, _first, _first_rep, _hd_in_component, _leaves
from streams.normalize.hl7.state import _ZBE_SIZE, _Mapping
from streams.normalize.result import CanonicalEvent

# Triggers that carry a movement of the visit (IHE PAM); Z99 is PAM France's "update a movement".
_ENCOUNTER_EVENT_TYPES: Final = ADT_MOVEMENTS
_CANCELLED_TRIGGER: Final[dict[str, str]] = {"A12": "A02", "A13": "A03"}
_STATUS_AFTER: Final[dict[str, str]] = {
    "A01": "in-progress",
    "A02": "in-progress",
    "A03": "finished",
    "A04": "in-progress",
    "A05": "planned",
    "A06": "in-progress",
    "A07": "in-progress",
    "A11": "cancelled",
    "A12": "in-progress",
    "A13": "in-progress",
}
_MOVEMENT_ACTIONS: Final = frozenset({"INSERT", "UPDATE", "CANCEL"})
# HL7 table 0004 (PV1-2) → FHIR v3-ActCode. N (not applicable), U (unknown), C (commercial account) and
# site-specific letters have no class: null rather than a guess.
_ENCOUNTER_CLASS: Final[dict[str, str]] = {
    "I": "IMP",
    "O": "AMB",
    "E": "EMER",
    "P": "PRENC",
    "R": "AMB",
    "B": "IMP",
}


def _location(raw: str, d: Delimiters, medical_unit: str | None = None) -> Record | None:
    """A PL (point of care^room^bed^facility HD) as the canonical Location, or None when empty."""
    if not raw and medical_unit is None:
        return None
    rep = _first_rep(raw, d)
    c = _leaves(rep, d, 4)
    facility = c[3]
    if facility and d.subcomponent in rep:
        name, oid = _hd_in_component(rep.split(d.component)[3], d)
        facility = name or oid or ""
    if not (c[0] or c[1] or c[2] or facility or medical_unit):
        return None
    return {
        "service": c[0] or None,
        "room": c[1] or None,
        "bed": c[2] or None,
        "facility": facility or None,
        "medical_unit": medical_unit,
    }


def _table_coding(raw: str, d: Delimiters) -> Record | None:
    """A user-defined table value (PV1-14, PV1-36): site-specific, so no system is claimed."""
    code = _first(raw, d) if raw else ""
    return {"system": None, "code": code, "display": None} if code else None


def _encounter(
    m: _Mapping,
    trigger: str,
    ref: Record,
    visit: Record,
    pv1: list[str],
    occurred: ClinicalTime | None,
    recorded: ClinicalTime | None,
) -> CanonicalEvent:
    d = m.d
    period_end = m.time(pv1[45], "PV1-45")
    period_start = m.time(pv1[44], "PV1-44")
    medical_unit: str | None = None
    movement: Record | None = None
    when = recorded
    status: str | None = None
    if trigger != "A08":
        zbe_seg = m.message.segment("ZBE")
        zbe = _fields(zbe_seg, d, _ZBE_SIZE) if zbe_seg is not None else [""] * (_ZBE_SIZE + 1)
        move_time = m.time(zbe[2], "ZBE-2") or occurred
        historic = _first(zbe[5], d).upper() == "Y"
        action = _first(zbe[4], d).upper()
        if trigger in ("A11", "A12", "A13"):
            action = "CANCEL"
        elif action not in _MOVEMENT_ACTIONS:
            action = "UPDATE" if trigger == "Z99" else "INSERT"
        original = _first(zbe[6], d) or _CANCELLED_TRIGGER.get(trigger)
        if zbe[7]:
            unit = _leaves(_first_rep(zbe[7], d), d, 10)
            medical_unit = unit[9] or unit[0] or None
        movement = {
            "type": trigger,
            "movement_id": _first(zbe[1], d) or None,
            "action": action,
            "time": move_time.instant if move_time else None,
            "historic": historic,
            "original_trigger": original or None,
            "nature": _first(zbe[9], d) or None,
        }
        when = move_time or recorded
        # A historic movement or a movement update says nothing about the visit's state now.
        if not historic and trigger != "Z99":
            status = _STATUS_AFTER.get(trigger)
    if status is None:
        status = "finished" if period_end else "in-progress" if period_start else "unknown"
    record: Record = {
        "envelope": None,
        "patient": ref,
        "encounter": visit,
        "status": status,
        "encounter_class": _ENCOUNTER_CLASS.get(_first(pv1[2], d).upper()) if pv1[2] else None,
        "movement": movement,
        "location": _location(pv1[3], d, medical_unit),
        "prior_location": _location(pv1[6], d),
        "period_start": period_start.instant if period_start else None,
        "period_end": period_end.instant if period_end else None,
        "admit_source": _table_coding(pv1[14], d),
        "discharge_disposition": _table_coding(pv1[36], d),
        "service_provider": m.organization_from_msh(),
    }
    event_type = "encounter.updated" if trigger == "A08" else _ENCOUNTER_EVENT_TYPES[trigger]
    return m.event("encounter", "PV1", event_type, when, record)
