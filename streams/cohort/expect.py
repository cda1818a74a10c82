"""What a cohort-scoped destination must receive, for whoever checks the pipeline from outside it.

The demo's accounting, the fault suite and the end-to-end tests compute, from the canonical records they
see, which national records must arrive. For a cohort-scoped destination that depends on the patient's
whole history (held until a diagnosis includes them, then released), so they ask the very decision the
cohort stage runs — :func:`streams.cohort.state.step` — on their own copy of each patient's state,
rather than re-deriving it. Records are kept decoded here (for the caller's own policy check), bounded as
the stage bounds its hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.cohort.definition import Cohort, scoped_destinations
from streams.cohort.state import Limits, PatientState, step


@dataclass(slots=True)
class CohortTracker:
    """Per patient key, the cohort stage's state; ``see`` says what each scoped destination gets now."""

    cohorts: Mapping[str, Cohort]
    limits: Limits = field(default_factory=Limits)
    _states: dict[str, PatientState] = field(default_factory=dict)
    _records: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # held event id → record

    @property
    def scoped(self) -> frozenset[str]:
        return scoped_destinations(self.cohorts)

    def see(self, kind: str, record: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
        """(destination, kind, record) for every record a scoped destination receives because of this
        one: the record itself when the patient is a member, and the held ones it releases."""
        key = str(record["patient"]["key"])
        event_id = str(record["envelope"]["event_id"])
        state = self._states.setdefault(key, PatientState())
        self._records[event_id] = (kind, record)
        moved = step(state, kind, record, event_id.encode(), self.cohorts, self.limits)
        out = []
        for forward in moved.forward:
            found = self._records.get(forward.event_id)
            if found is not None:
                out.append((forward.destination, found[0], found[1]))
        held = {h.event_id for s in [state] for h in s.held}
        for forward in moved.forward:  # records every destination now has need not be kept
            if forward.event_id not in held:
                self._records.pop(forward.event_id, None)
        return out

    def held(self) -> dict[str, int]:
        """Per scoped destination, the records held (their patient in none of its cohorts yet)."""
        counts = dict.fromkeys(sorted(self.scoped), 0)
        for state in self._states.values():
            for held in state.held:
                for destination in counts:
                    if destination not in held.sent:
                        counts[destination] += 1
        return counts
