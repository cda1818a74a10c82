"""What a mapper returns: canonical events, or one rejection with a precise, content-free reason.

Mappers raise :class:`MappingError` where a rule fails; :func:`run_mapper` turns that (and any bug) into a
:class:`Rejection`, so a poison message becomes a dead letter and never stops a partition.

Some rules concern only a part of a message (an ADT movement without a visit number, an INS failing its
key check next to a valid IPP): refusing the whole message would lose what is sound in it, the
patient's demographics. A mapper then returns :class:`Mapped` — its events, plus the parts it left out,
each a :class:`Rejection` — and the stage writes both: a *partial mapping*.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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


class Mapped(list[CanonicalEvent]):
    """A mapper's events, and the parts of the message it left out (``dropped``, each a Rejection).

    A list, so that a caller that only wants the events reads a partial mapping like a whole one; the
    stage also reads ``dropped`` and dead-letters each part next to the events.
    """

    __slots__ = ("dropped",)

    def __init__(self, events: Iterable[CanonicalEvent] = (), dropped: Iterable[Rejection] = ()) -> None:
        super().__init__(events)
        self.dropped: tuple[Rejection, ...] = tuple(dropped)


MappingOutcome = Mapped | Rejection


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
    dropped = events.dropped if isinstance(events, Mapped) else ()
    if not events:
        if dropped:
            return dropped[0]  # nothing was left to map: the part left out is why
        return Rejection(ReasonCode.NOTHING_TO_MAP, "the message holds no event this hub maps")
    return events if isinstance(events, Mapped) else Mapped(events)
