"""What a mapper returns: canonical events, or one rejection with a precise, content-free reason.

Mappers raise :class:`MappingError` where a rule fails; :func:`run_mapper` turns that (and any bug) into a
:class:`Rejection`, so a poison message becomes a dead letter and never stops a partition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from formats.reasons import ReasonCode, Refused

CANONICAL_KINDS = (
    "patient",
    "encounter",
    "observation",
    "condition",
    "procedure",
    "diagnostic_report",
    "retraction",
)


@dataclass(frozen=True, slots=True)
class CanonicalEvent:
    kind: str  # one of CANONICAL_KINDS; the topic is canonical.<kind>
    key: str  # the hospital patient key (IPP@authority): keeps a patient's events in order
    record: dict[str, Any]

    @property
    def event_id(self) -> str:
        return str(self.record["envelope"]["event_id"])


@dataclass(frozen=True, slots=True)
class Rejection:
    reason_code: ReasonCode  # the closed vocabulary of formats/reasons.py: dead letter and metric label
    reason: str  # for an operator; never a value from the message
    location: str = ""  # PID-7, OBX(2)-5, Observation.valueQuantity, ...
    rule: str = ""


class MappingError(Refused):
    """A rule the message breaks. Text must hold positions and rules only, never message values."""

    def rejection(self) -> Rejection:
        return Rejection(self.code, self.reason, self.location, self.rule)


MappingOutcome = list[CanonicalEvent] | Rejection


def run_mapper(mapper: Callable[..., list[CanonicalEvent]], *args: Any) -> MappingOutcome:
    """Never raises. An unexpected exception is reported by type only (its text may hold data)."""
    try:
        events = mapper(*args)
    except MappingError as exc:
        return exc.rejection()
    except Refused as exc:  # the shared formats' checks (FHIR R4, device templates)
        return Rejection(exc.code, exc.reason, exc.location, exc.rule)
    except Exception as exc:
        return Rejection(
            ReasonCode.MAPPING_FAILED, f"unexpected {type(exc).__name__} in {mapper.__name__}", rule="bug"
        )
    if not events:
        return Rejection(ReasonCode.NOTHING_TO_MAP, "the message holds no event this hub maps")
    return events
