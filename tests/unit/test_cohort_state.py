"""The cohort stage's decision, event by event: held until a diagnosis includes the patient, then
released in order with the original ids, then forwarded; bounded; leaving on death; a state that
survives its own serialisation (the table's changelog)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from formats.clinical.codes import CIM10, LOINC
from streams.cohort.definition import compile_cohort, load_cohorts
from streams.cohort.state import Limits, PatientState, step

COHORTS = load_cohorts(("hdh", "inca"))
T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


def envelope(event_id: str, at: datetime, ingest: datetime | None = None) -> dict[str, Any]:
    return {"event_id": event_id, "event_time": at, "ingest_time": ingest or at + timedelta(minutes=5)}


def lab(n: int, at: datetime) -> tuple[str, dict[str, Any], bytes]:
    record = {"envelope": envelope(f"lab-{n}", at), "code": {"system": LOINC, "code": "2345-7"}}
    return "observation", record, f"lab-{n}".encode()


def diagnosis(
    event_id: str, code: str, at: datetime, status: str | None = "confirmed"
) -> tuple[str, dict[str, Any], bytes]:
    record = {
        "envelope": envelope(event_id, at),
        "code": {"system": CIM10, "code": code, "display": None},
        "additional_codings": [],
        "verification_status": status,
        "onset_time": at,
        "recorded_time": at,
        "tumour": None,
    }
    return "condition", record, event_id.encode()


def run(state: PatientState, events: list[tuple[str, dict[str, Any], bytes]], **kw: Any) -> list[Any]:
    return [step(state, kind, record, value, COHORTS, **kw) for kind, record, value in events]


def test_labs_are_held_then_released_in_order_when_a_cancer_is_diagnosed_months_later() -> None:
    state = PatientState()
    labs = [lab(n, T0 + timedelta(days=10 * n)) for n in range(9)]  # 80 days of labs
    steps = run(state, labs)
    assert all(not s.forward and not s.joined for s in steps)  # INCa gets nothing of them yet
    assert [h.event_id for h in state.held] == [f"lab-{n}" for n in range(9)]

    [joined] = run(state, [diagnosis("dx-1", "C34.1", T0 + timedelta(days=90))])
    assert [(f.event_id, f.released) for f in joined.forward] == [
        *[(f"lab-{n}", True) for n in range(9)],
        ("dx-1", False),
    ]
    assert {f.destination for f in joined.forward} == {"inca"}
    assert [f.value for f in joined.forward][:2] == [b"lab-0", b"lab-1"]  # bytes untouched
    assert sorted((j.destination, j.membership.cohort) for j in joined.joined) == [
        ("inca", "inca-all-cancers"),
        ("inca", "inca-lung"),
    ]
    lung = state.memberships["inca-lung"]
    assert (lung.event_id, lung.evidence, lung.code) == ("dx-1", "diagnosis", "C34.1")
    assert not state.held  # everything released: nothing left to hold for INCa

    [later] = run(state, [lab(99, T0 + timedelta(days=120))])
    assert [(f.event_id, f.released) for f in later.forward] == [("lab-99", False)]
    assert not state.held


def test_a_patient_without_cancer_never_reaches_the_cohort_destination() -> None:
    state = PatientState()
    steps = run(
        state, [lab(1, T0), diagnosis("dx-htn", "I10", T0), diagnosis("dx-r", "C25.0", T0, "refuted")]
    )
    assert all(not s.forward and not s.joined for s in steps)
    assert not state.memberships and len(state.held) == 3


def test_only_the_look_back_is_released() -> None:
    state = PatientState()
    run(state, [lab(1, T0), lab(2, T0 + timedelta(days=300))])
    [joined] = run(state, [diagnosis("dx", "C16.9", T0 + timedelta(days=400))])
    assert [f.event_id for f in joined.forward] == ["lab-2", "dx"]  # lab-1 is 400 days before


def test_a_second_cohort_of_the_same_destination_sends_nothing_twice() -> None:
    cohorts = {
        **COHORTS,
        "long": compile_cohort(
            {
                "cohort": "long",
                "version": 1,
                "destinations": ["inca"],
                "include": {"cim10": ["C50"]},
                "lookback_days": 900,
            },
            "long.yaml",
            ("inca",),
        ),
    }
    state = PatientState()
    for kind, record, value in [lab(1, T0), lab(2, T0 + timedelta(days=500))]:
        step(state, kind, record, value, cohorts)
    kind, record, value = diagnosis("dx-lung", "C34.9", T0 + timedelta(days=600))
    first = step(state, kind, record, value, cohorts)
    assert [f.event_id for f in first.forward] == ["lab-2", "dx-lung"]  # 365 days
    kind, record, value = diagnosis("dx-breast", "C50.4", T0 + timedelta(days=610))
    second = step(state, kind, record, value, cohorts)
    # the 900-day cohort wants lab-1 too, which INCa never got; lab-2 it already has
    assert [(f.event_id, f.released) for f in second.forward] == [("lab-1", True), ("dx-breast", False)]
    assert not state.held


def test_a_member_leaves_after_death_when_the_cohort_says_so() -> None:
    cohorts = {
        "short": compile_cohort(
            {
                "cohort": "short",
                "version": 1,
                "destinations": ["inca"],
                "include": {"cim10": ["C34"]},
                "exit": {"after_death_days": 30},
            },
            "short.yaml",
            ("inca",),
        )
    }
    state = PatientState()
    kind, record, value = diagnosis("dx", "C34.1", T0)
    step(state, kind, record, value, cohorts)
    died = {
        "envelope": envelope("p-1", T0 + timedelta(days=10)),
        "deceased": True,
        "death_date": date(2026, 1, 15),
    }
    assert [f.event_id for f in step(state, "patient", died, b"p-1", cohorts).forward] == ["p-1"]
    kind, record, value = lab(5, T0 + timedelta(days=40))
    gone = step(state, kind, record, value, cohorts)
    assert gone.left == ["short"] and not gone.forward and "short" not in state.memberships
    kind, record, value = diagnosis("dx-again", "C34.1", T0 + timedelta(days=41))
    assert not step(state, kind, record, value, cohorts).joined  # a member who left does not rejoin


def test_the_hold_is_bounded_per_patient_and_counts_what_it_drops() -> None:
    state = PatientState()
    limits = Limits(max_events=1_000, max_bytes=10_000)
    evicted = 0
    for n in range(100_000):
        kind, record, value = lab(n, T0 + timedelta(seconds=n))
        evicted += step(state, kind, record, value, COHORTS, limits).evicted
    assert len(state.held) <= 1_000 and state.held_bytes <= 10_000
    assert evicted == 100_000 - len(state.held)
    assert state.held[-1].event_id == "lab-99999"  # the newest are kept


def test_the_state_survives_its_serialisation() -> None:
    state = PatientState()
    run(state, [lab(1, T0), lab(2, T0 + timedelta(days=1))])
    died = {"envelope": envelope("p", T0), "deceased": True, "death_date": date(2026, 2, 1)}
    step(state, "patient", died, b"\x00\xffp", COHORTS)

    def same(a: PatientState, b: PatientState) -> None:
        assert a.memberships == b.memberships and a.left == b.left
        assert [(h.kind, h.event_id, h.at, h.value, h.sent) for h in a.held] == [
            (h.kind, h.event_id, h.at, h.value, h.sent) for h in b.held
        ]
        assert (a.held_bytes, a.deceased, a.newest) == (b.held_bytes, b.deceased, b.newest)

    assert len(state.held) == 3 and state.deceased is not None
    same(PatientState.from_bytes(state.to_bytes()), state)
    run(state, [diagnosis("dx", "C25.0", T0 + timedelta(days=2))])
    assert state.memberships and not state.held
    same(PatientState.from_bytes(state.to_bytes()), state)
    assert PatientState.from_bytes(None).memberships == {}


def test_the_tracker_says_what_inca_gets_and_what_it_still_holds() -> None:
    from streams.cohort.expect import CohortTracker

    tracker = CohortTracker(COHORTS)
    assert tracker.scoped == {"inca"}

    def seen(kind: str, record: dict[str, Any], key: str) -> list[str]:
        record = {**record, "patient": {"key": key}}
        return [f"{d}:{r['envelope']['event_id']}" for d, _, r in tracker.see(kind, record)]

    assert seen(*lab(1, T0)[:2], "A@x") == []  # held
    assert seen(*lab(2, T0)[:2], "B@x") == []
    assert tracker.held() == {"inca": 2}
    assert seen(*diagnosis("dx-a", "C61", T0 + timedelta(days=3))[:2], "A@x") == ["inca:lab-1", "inca:dx-a"]
    assert tracker.held() == {"inca": 1}  # B's lab still held: B has no cancer
    assert seen(*lab(3, T0 + timedelta(days=4))[:2], "A@x") == ["inca:lab-3"]
