"""One patient's cohort state and the one step that moves it: the cohort stage's whole decision, pure.

For every canonical event of a patient the stage asks :func:`step`, which returns what to forward to
each cohort-scoped destination and the patient's new state (the Faust table's value). The rules:

* Until a patient is in a cohort feeding a destination, their events are *held* (buffered), within the
  longest look-back of the cohorts, bounded per patient in count and bytes (oldest evicted first,
  counted) — so a patient with 100,000 lab results costs a bounded amount of state.
* The event that includes a patient (:func:`streams.cohort.rules.evidence`) *releases* to each of the
  cohort's destinations the held events within the cohort's look-back of the evidence's clinical time,
  in the order they arrived, unchanged (same bytes, same event ids: a replay collapses downstream), then
  the evidence itself, and records a membership (cohort, since, evidence event id).
* From then on the patient's new events are forwarded at once, whatever their clinical time.
* A member leaves when the cohort's exit rule says so (days after death); nothing more is forwarded
  for that cohort. Opposition is not decided here: the pseudonymize stage withholds an objecting
  patient's records from every destination (``streams/pseudonymize/opposition.py``, one decision).
* An event already sent to every scoped destination is not held at all.

Times are the event's clinical time when it has one, else the time the hub received it; the
"now" of exit rules is the event's ingest time, so a replay reaches the same decisions.
"""

from __future__ import annotations

import base64
import json
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import islice
from typing import Any

from streams.cohort.definition import Cohort
from streams.cohort.rules import Evidence, evidence

_DAY_US = 86_400_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-patient bounds of the held events (the stage also bounds the total, by the table's size)."""

    max_events: int = 10_000
    max_bytes: int = 8 * 1024 * 1024


@dataclass(slots=True)
class Held:
    """One event held for destinations that do not have it yet."""

    kind: str
    event_id: str
    at: int  # µs since the epoch, clinical time else ingest time
    value: bytes  # the canonical record's bytes, untouched
    sent: frozenset[str] = frozenset()  # destinations that already have it


@dataclass(frozen=True, slots=True)
class Membership:
    cohort: str
    since: int  # µs: the clinical time of the evidence
    event_id: str  # the evidence's canonical event id
    evidence: str  # "diagnosis" | "morphology" | "topography"
    code: str


@dataclass(slots=True)
class PatientState:
    memberships: dict[str, Membership] = field(default_factory=dict)
    left: dict[str, int] = field(default_factory=dict)  # cohort → when the member left (µs)
    held: deque[Held] = field(default_factory=deque)
    held_bytes: int = 0
    deceased: int | None = None  # µs: the date of death, when a patient record gave one
    newest: int = 0  # µs: the latest event time seen (the look-back is measured from it)

    def to_bytes(self) -> bytes:
        """The table value: JSON, the held values base64 (small next to the values themselves)."""
        doc = {
            "m": [[m.cohort, m.since, m.event_id, m.evidence, m.code] for m in self.memberships.values()],
            "l": self.left,
            "h": [
                [h.kind, h.event_id, h.at, base64.b64encode(h.value).decode(), sorted(h.sent)]
                for h in self.held
            ],
            "d": self.deceased,
            "n": self.newest,
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes | None) -> PatientState:
        if not data:
            return cls()
        doc = json.loads(data)
        held = deque(Held(k, e, at, base64.b64decode(v), frozenset(s)) for k, e, at, v, s in doc["h"])
        return cls(
            memberships={m[0]: Membership(*m) for m in doc["m"]},
            left={k: int(v) for k, v in doc["l"].items()},
            held=held,
            held_bytes=sum(len(h.value) for h in held),
            deceased=doc["d"],
            newest=int(doc.get("n", 0)),
        )


@dataclass(frozen=True, slots=True)
class Forward:
    """An event for a destination: to ``cohort.<destination>.<kind>``, bytes unchanged."""

    destination: str
    kind: str
    event_id: str
    value: bytes
    released: bool  # True: held until the patient joined; False: forwarded as it came


@dataclass(frozen=True, slots=True)
class Joined:
    """A patient entered a cohort: the membership event the destinations receive."""

    destination: str
    membership: Membership


@dataclass(slots=True)
class Step:
    forward: list[Forward] = field(default_factory=list)
    joined: list[Joined] = field(default_factory=list)
    left: list[str] = field(default_factory=list)  # cohorts the patient left at this event
    evicted: int = 0  # held events dropped by the per-patient bounds or the look-back


def event_time(record: Mapping[str, Any]) -> int:
    envelope = record["envelope"]
    for value in (envelope.get("event_time"), envelope.get("ingest_time")):
        if isinstance(value, datetime):
            return micros(value)
    return 0


def _now(record: Mapping[str, Any]) -> int:
    ingest = record["envelope"].get("ingest_time")
    return micros(ingest) if isinstance(ingest, datetime) else event_time(record)


def _death(record: Mapping[str, Any]) -> int | None:
    if not record.get("deceased"):
        return None
    when = record.get("death_date")
    if isinstance(when, datetime):
        return micros(when)
    if isinstance(when, date):
        return micros(datetime(when.year, when.month, when.day, tzinfo=UTC))
    return _now(record)  # deceased without a date: from when the hub learnt it


def step(
    state: PatientState,
    kind: str,
    record: Mapping[str, Any],
    value: bytes,
    cohorts: Mapping[str, Cohort],
    limits: Limits = Limits(),
) -> Step:
    """Move ``state`` (in place) by one canonical event; return what to send."""
    out = Step()
    at, now = event_time(record), _now(record)
    if kind == "patient":
        died = _death(record)
        if died is not None:
            state.deceased = died
    _exits(state, cohorts, now, out)
    scoped = frozenset(d for c in cohorts.values() for d in c.destinations)
    event_id = str(record["envelope"]["event_id"])
    for found in evidence(kind, record, _open(cohorts, state)):
        _join(state, cohorts, cohorts[found.cohort], found, out)
    sent: set[str] = set()
    for destination in sorted(_fed(state, cohorts)):
        out.forward.append(Forward(destination, kind, event_id, value, released=False))
        sent.add(destination)
    again = any(h.event_id == event_id for h in islice(reversed(state.held), 64))  # a re-read input
    if scoped - sent and not again:
        state.held.append(Held(kind, event_id, at, value, frozenset(sent)))
        state.held_bytes += len(value)
    state.newest = max(state.newest, at)
    out.evicted += _bound(state, cohorts, limits, state.newest)
    return out


def _open(cohorts: Mapping[str, Cohort], state: PatientState) -> Iterable[Cohort]:
    """Cohorts the patient may still join (not a member, never left)."""
    return [c for name, c in cohorts.items() if name not in state.memberships and name not in state.left]


def _fed(state: PatientState, cohorts: Mapping[str, Cohort]) -> set[str]:
    return {d for name in state.memberships if name in cohorts for d in cohorts[name].destinations}


def _join(
    state: PatientState, cohorts: Mapping[str, Cohort], cohort: Cohort, found: Evidence, out: Step
) -> None:
    since = micros(found.at) if found.at is not None else 0
    membership = Membership(cohort.name, since, found.event_id, found.kind, found.code)
    state.memberships[cohort.name] = membership
    start = since - cohort.lookback_days * _DAY_US
    for destination in cohort.destinations:
        out.joined.append(Joined(destination, membership))
        for held in state.held:
            if destination not in held.sent and held.at >= start:
                out.forward.append(Forward(destination, held.kind, held.event_id, held.value, released=True))
                held.sent = held.sent | {destination}
    scoped = frozenset(d for c in cohorts.values() for d in c.destinations)
    if scoped:  # released to every destination: no longer held (joins are rare; one pass is fine)
        state.held = deque(h for h in state.held if not scoped <= h.sent)
        state.held_bytes = sum(len(h.value) for h in state.held)


def _exits(state: PatientState, cohorts: Mapping[str, Cohort], now: int, out: Step) -> None:
    if state.deceased is None:
        return
    for name in list(state.memberships):
        cohort = cohorts.get(name)
        days = cohort.exit.after_death_days if cohort is not None else None
        if days is not None and now >= state.deceased + days * _DAY_US:
            del state.memberships[name]
            state.left[name] = now
            out.left.append(name)


def _bound(state: PatientState, cohorts: Mapping[str, Cohort], limits: Limits, newest: int) -> int:
    """Drop from the oldest end what no destination can still need or what exceeds the bounds.

    Held events are in arrival order; the look-back is measured from the newest clinical time seen, so
    an event older than the longest look-back before it can no longer be released (a diagnosis dated
    further back than that arriving later is the one case it misses: counted as an eviction)."""
    scoped = frozenset(d for c in cohorts.values() for d in c.destinations)
    lookback = max((c.lookback_days for c in cohorts.values()), default=0) * _DAY_US
    held = state.held
    evicted = 0
    while held and (
        scoped <= held[0].sent
        or held[0].at < newest - lookback
        or len(held) > limits.max_events
        or state.held_bytes > limits.max_bytes
    ):
        gone = held.popleft()
        state.held_bytes -= len(gone.value)
        evicted += 0 if scoped <= gone.sent else 1
    return evicted
