"""What a mapper returns: canonical events, or one rejection with a precise, content-free reason.

Mappers raise :class:`MappingError` where a rule fails; :func:`run_mapper` turns that (and any bug) into a
:class:`Rejection`, so a poison message becomes a dead letter and never stops a partition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
    reason_code: str  # small closed set, a metric label
    reason: str  # for an operator; never a value from the message
    location: str = ""  # PID-7, OBX(2)-5, Observation.valueQuantity, ...
    rule: str = ""


class MappingError(Exception):
    """A rule the message breaks. Text must hold positions and rules only, never message values."""

    def __init__(self, code: str, reason: str, location: str = "", rule: str = "") -> None:
        super().__init__(reason)
        self.code, self.reason, self.location, self.rule = code, reason, location, rule

    def rejection(self) -> Rejection:
        return Rejection(self.code, self.reason, self.location, self.rule)


MappingOutcome = list[CanonicalEvent] | Rejection


def run_mapper(mapper: Callable[..., list[CanonicalEvent]], *args: Any) -> MappingOutcome:
    """Never raises. An unexpected exception is reported by type only (its text may hold data)."""
    try:
        events = mapper(*args)
    except MappingError as exc:
        return exc.rejection()
    except Exception as exc:
        return Rejection(
            "mapping_failed", f"unexpected {type(exc).__name__} in {mapper.__name__}", rule="bug"
        )
    if not events:
        return Rejection("nothing_to_map", "the message holds no event this hub maps")
    return events
