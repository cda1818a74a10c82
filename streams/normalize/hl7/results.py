"""ORU^R01 (laboratory, vital signs, IHE PCD-01 devices): OBR groups as DiagnosticReports of their OBX.

Apart because walking a results message (which PID, PV1 and OBR each OBX belongs to, NTE notes as the
conclusion, the specimen) is the ORU's own structure, independent of how one value is read.
"""

from __future__ import annotations

from typing import Final

from formats.reasons import ReasonCode
from streams.normalize.hl7.fields import Record, _fields, _first, _first_rep, _text
from streams.normalize.hl7.observations import _observation, _Order
from streams.normalize.hl7.state import _NTE_SIZE, _OBR_SIZE, _OBX_SIZE, _PID_SIZE, _SPM_SIZE, _Mapping
from streams.normalize.result import CanonicalEvent, MappingError

# HL7 table 0123 (OBR-25) → FHIR DiagnosticReport.status.
_OBR_STATUS: Final[dict[str, str]] = {
    "F": "final",
    "C": "corrected",
    "P": "preliminary",
    "X": "cancelled",
    "R": "partial",
    "A": "partial",
    "O": "registered",
    "I": "registered",
    "S": "registered",
}


def _map_oru(m: _Mapping) -> list[CanonicalEvent]:
    d = m.d
    events: list[CanonicalEvent] = []
    ref: Record | None = None
    visit: Record | None = None
    order: _Order | None = None
    specimen: Record | None = None
    pid_count = obr_count = obx_count = obx_in_order = 0
    facility = m.organization_from_msh()
    for seg in m.message.segments:
        name = seg.name
        if name == "OBX":
            obx_count += 1
            if ref is None:
                raise MappingError(ReasonCode.NO_PATIENT, "results come before any PID segment", "PID-3")
            if order is not None:
                obx_in_order += 1
                index = f"OBR[{order.index}]/OBX[{obx_in_order}]"
            else:
                index = f"OBX[{obx_count}]"
            obs = _observation(m, _fields(seg, d, _OBX_SIZE), obx_count, index, order, ref, visit, facility)
            if obs is None:
                continue
            if order is not None:
                order.observations.append(obs)
            else:
                events.append(obs)
        elif name == "OBR":
            obr_count += 1
            if ref is None:
                raise MappingError(ReasonCode.NO_PATIENT, "results come before any PID segment", "PID-3")
            if order is not None:
                events.extend(_close_order(m, order, specimen, ref, visit, facility))
            order = _Order(m, obr_count, _fields(seg, d, _OBR_SIZE))
            specimen = None
            obx_in_order = 0
        elif name == "NTE":
            if order is not None:
                parts = _fields(seg, d, _NTE_SIZE)
                note = "\n".join(t for t in (_text(r, d) for r in parts[3].split(d.repetition)) if t)
                if note:
                    order.notes.append(note)
        elif name == "PID":
            pid_count += 1
            if order is not None and ref is not None:
                events.extend(_close_order(m, order, specimen, ref, visit, facility))
                order = None
            parts = _fields(seg, d, _PID_SIZE)
            ref = m.patient(parts[3], parts[32], "PID-3" if pid_count == 1 else f"PID({pid_count})-3")
            visit = None
        elif name == "PV1":
            visit = m.visit(_fields(seg, d, 19)[19])
        elif name == "SPM" and order is not None and specimen is None:
            specimen = m.first_coding(_fields(seg, d, _SPM_SIZE)[4])
        # ORC, TQ1, Z-segments...: nothing canonical, and never a reason to fail
    if ref is None:
        raise MappingError(ReasonCode.NO_PATIENT, "the message has no PID segment", "PID-3")
    if order is not None:
        events.extend(_close_order(m, order, specimen, ref, visit, facility))
    return events


def _sps_specimen(m: _Mapping, raw: str) -> Record | None:
    """OBR-15 (SPS, deprecated since 2.5): the specimen source is in the subcomponents of component 1."""
    if not raw:
        return None
    d = m.d
    subs = _first_rep(raw, d).partition(d.component)[0].split(d.subcomponent)
    code = _text(subs[0], d)
    if not code:
        return None
    return {
        "system": m.system_uri(_text(subs[2], d) if len(subs) > 2 else ""),
        "code": code,
        "display": (_text(subs[1], d) if len(subs) > 1 else "") or None,
    }


def _close_order(
    m: _Mapping,
    order: _Order,
    specimen: Record | None,
    ref: Record,
    visit: Record | None,
    facility: Record | None,
) -> list[CanonicalEvent]:
    d = m.d
    parts = order.parts
    specimen = specimen or _sps_specimen(m, parts[15])
    if specimen is not None:
        for obs in order.observations:
            obs.record["specimen_type"] = specimen
    code = m.first_coding(parts[4])
    if code is None:
        raise MappingError(
            ReasonCode.NO_CODE, "the report has no universal service identifier", f"OBR({order.index})-4"
        )
    status = _OBR_STATUS.get(_first(parts[25], d).upper(), "unknown") if parts[25] else "unknown"
    event_type = _REPORT_EVENT_TYPES.get(status, "diagnostic_report.issued")
    effective, issued = order.effective, order.issued
    record: Record = {
        "envelope": None,
        "patient": ref,
        "encounter": visit,
        "code": code,
        "status": status,
        "category": order.section or None,
        "effective_time": effective.instant if effective else None,
        "effective_time_precision": effective.precision if effective else None,
        "issued": issued.instant if issued else None,
        "result_event_ids": [obs.event_id for obs in order.observations],
        "conclusion": "\n".join(order.notes) or None,
        "conclusion_codes": [],
        "performer_organization": facility,
    }
    report = m.event("diagnostic_report", f"OBR[{order.index}]", event_type, effective or issued, record)
    return [*order.observations, report]


_REPORT_EVENT_TYPES: Final[dict[str, str]] = {
    "corrected": "diagnostic_report.corrected",
    "cancelled": "diagnostic_report.cancelled",
}
