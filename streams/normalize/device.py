"""Device readings → canonical Observations: the raw payload read again with its mapping template.

The door stored the untouched payload and the template's name (raw attribute ``mapping``); this mapper
reads it with the *current* template, so a template fixed after the fact can be replayed over stored
raw data. The patient comes from the payload when the template says where (a gateway that knows the
IPP), otherwise from the device registry at the reading's time. Rules:

- event id = SHA-256 of
  ``device|devices|<device id>|<reading time, UTC ISO>|observation.recorded@<system>|<code>``:
  the same reading sent twice — resent by a gateway, or through HTTP and MQTT — collapses downstream;
- a reading more than ``max_future_skew`` after the raw record's arrival carries the interpretation
  flag ``future-time`` (system :data:`FLAG_SYSTEM`): kept, not dropped, since the measurement is real
  and only the device clock is wrong; arrival time (not the wall clock) keeps the flag replayable;
- an unknown device, or one not linked at the reading's time, rejects the raw record (dead letter with
  ``unknown_device`` / ``unlinked_device``); after linking it, replaying the record yields the same ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Final, Protocol

from formats.clinical.identity import patient_ref_of
from formats.devices.registry import Resolution
from formats.devices.templates import MAPPING_ATTRIBUTE, PayloadError, Reading, Template, read_payload
from formats.reasons import ReasonCode
from streams.normalize.envelope import RawContext, envelope, event_id_of
from streams.normalize.options import MappingOptions
from streams.normalize.result import CanonicalEvent, MappingError

FLAG_SYSTEM: Final = "urn:affluent:device-reading-flag"
FUTURE_FLAG: Final = {
    "system": FLAG_SYSTEM,
    "code": "future-time",
    "display": "reading time is later than its arrival by more than the allowed clock skew",
}


class PatientResolver(Protocol):
    def resolve(self, device_id: str, when: Any) -> Resolution: ...


def reading_event_id(device_id: str, when_iso: str, system: str, code: str) -> str:
    return event_id_of("device", "devices", device_id, when_iso, f"observation.recorded@{system}|{code}")


class DeviceMapper:
    """The normalize stage's mapper for protocol ``device``; a callable so that it holds its templates,
    registry and skew while keeping the ``(payload, ctx, options)`` shape of the other mappers."""

    __name__ = "map_device"

    def __init__(
        self,
        templates: Mapping[str, Template],
        registry: PatientResolver,
        max_future_skew: timedelta = timedelta(minutes=5),
    ) -> None:
        self.templates = templates
        self.registry = registry
        self.max_future_skew = max_future_skew

    def __call__(self, payload: bytes, ctx: RawContext, options: MappingOptions) -> list[CanonicalEvent]:
        name = ctx.attributes.get(MAPPING_ATTRIBUTE, "")
        template = self.templates.get(name)
        if template is None:
            raise MappingError(
                ReasonCode.UNKNOWN_MAPPING, "the raw record names no known mapping template", "mapping"
            )
        try:
            readings = read_payload(template, payload)
        except PayloadError as exc:
            raise MappingError(exc.code, exc.reason, exc.location, rule=f"template {template.name}") from None
        events: list[CanonicalEvent] = []
        seen: set[str] = set()
        for reading in readings:
            patient = self._patient(template, reading)
            for event in observations(template, reading, patient, ctx, self.max_future_skew):
                if event.event_id not in seen:
                    seen.add(event.event_id)
                    events.append(event)
        return events

    def _patient(self, template: Template, reading: Reading) -> dict[str, Any]:
        if reading.patient_ipp is not None and template.patient_authority is not None:
            return patient_ref_of(reading.patient_ipp, template.patient_authority)
        found = self.registry.resolve(reading.device_id, reading.time.instant)
        if found.patient is None:
            reason = (
                "the device is not in the device registry"
                if found.reason_code == ReasonCode.UNKNOWN_DEVICE
                else "the device is linked to no patient at the reading's time"
            )
            raise MappingError(
                found.reason_code or ReasonCode.UNKNOWN_DEVICE,
                reason,
                reading.location,
                rule="device registry",
            )
        return found.patient


def observations(
    template: Template,
    reading: Reading,
    patient: dict[str, Any],
    ctx: RawContext,
    max_future_skew: timedelta,
) -> list[CanonicalEvent]:
    """One Observation per measurement: a blood-pressure reading gives systolic, diastolic, pulse."""
    when = reading.time
    when_iso = when.instant.isoformat()
    future = when.instant - ctx.received_at > max_future_skew
    events: list[CanonicalEvent] = []
    for m in reading.measurements:
        code = m.spec.code
        env = envelope(ctx, f"observation.recorded@{code.system}|{code.code}", "observation.recorded", when)
        env["event_id"] = reading_event_id(reading.device_id, when_iso, code.system, code.code)
        record: dict[str, Any] = {
            "envelope": env,
            "patient": patient,
            "encounter": None,
            "status": "final",
            "category": template.category,
            "code": {"system": code.system, "code": code.code, "display": code.display, "local": False},
            "additional_codings": [],
            "value_quantity": m.quantity,
            "value_code": None,
            "value_string": None,
            "value_boolean": None,
            "data_absent_reason": None,
            "reference_range": None,
            "interpretation": [dict(FUTURE_FLAG)] if future else [],
            "method": None,
            "device": {
                "id": reading.device_id,
                "id_system": reading.device_id_system,
                "model": reading.model,
                "manufacturer": reading.manufacturer,
                "hierarchy": None,
            },
            "effective_time": when.instant,
            "effective_time_precision": when.precision,
            "issued": None,
            "components": [],
            "specimen_type": None,
            "performer_organization": None,
        }
        events.append(CanonicalEvent("observation", patient["key"], record))
    return events
